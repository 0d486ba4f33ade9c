"""The submission bundle: complete, checksummed, its card honest; tampering is caught."""

from __future__ import annotations

import shutil

import yaml

from engine.bundle import validate_bundle
from engine.sdk.run import run_inline
from engine.workspace import Workspace


def test_submit_bundle_and_validation(tmp_path, tiny_model_dir):
    ws = Workspace(tmp_path / "ws").init()
    ws.spec_path.write_text(yaml.safe_dump({"name": "b", "stages": {"submit": {
        "kind": "submit", "params": {"model_name": "tiny"}, "memory_gb": 0.1, "duration_h": 0.1,
        "inputs": {"gguf": "model:gguf", "model": "model:final"}}},
        "models": {"gguf": {"path": str(tmp_path / "gguf")}, "final": {"path": str(tiny_model_dir)}}}))
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "model-Q4_K_M.gguf").write_bytes(b"GGUF" + bytes(64))
    out = run_inline(ws, "submit", "submit", {"model_name": "tiny"},
                     {"gguf": tmp_path / "gguf", "model": tiny_model_dir}, outputs=["bundle"])
    assert out == "ok"
    bundle = ws.artifact_path("submit", "bundle")
    assert validate_bundle(bundle) == []
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "# tiny" in card and "## Gates" in card and "## Lineage" in card and "## Contracts" in card
    assert (bundle / "checkpoint" / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    (bundle / "model.gguf").write_bytes(b"tampered")
    (bundle / "checkpoint" / "tokenizer.json").unlink()
    shutil.copy(bundle / "MODEL_CARD.md", bundle / "extra.md")
    problems = validate_bundle(bundle)
    assert any("model.gguf: sha256 differs" in p for p in problems)
    assert any("tokenizer.json: missing" in p for p in problems)
    assert any("extra.md: not listed" in p for p in problems)


def test_the_card_shows_the_override_and_each_record_once_and_a_lapsed_approval_stops_the_stage(tmp_path, tiny_model_dir):
    from test_gates import commit_as_job, eval_record, grant

    from engine.approvals import check_approvable
    from engine.chain import append_chained
    from engine.events import read_events
    from engine.spec import load_spec
    from engine.workspace import content_hash

    model = tmp_path / "final"
    shutil.copytree(tiny_model_dir, model)
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "model-Q4_K_M.gguf").write_bytes(b"GGUF" + bytes(64))
    ws = Workspace(tmp_path / "ws").init()
    ws.spec_path.write_text(yaml.safe_dump({
        "name": "b", "models": {"gguf": {"path": str(tmp_path / "gguf")}, "final": {"path": str(model)}},
        "work_items": {"W": {"title": "ship", "acceptance": ["AC-1"]}},
        "stages": {"submit": {"kind": "submit", "params": {"model_name": "tiny"}, "memory_gb": 0.1, "duration_h": 0.1,
                              "work_item": "W", "approval": "required",
                              "inputs": {"gguf": "model:gguf", "model": "model:final"}}},
        "acceptance": {"AC-1": {"checkpoint": "model:final", "expr": "humaneval.pass_at_1 >= 0.85"}}}))
    spec = load_spec(ws.spec_path)
    rec = eval_record("humaneval", content_hash(model), 0.1, model)
    commit_as_job(ws, "ev", rec)
    commit_as_job(ws, "ev", rec)  # a re-run of the same job: adopted, not a second line
    evidence, refusal = check_approvable(spec, ws, "submit", override="tiny models")
    assert refusal is None
    append_chained(ws.journal_path, [grant("submit", evidence, "tiny models")])
    inputs = {"gguf": tmp_path / "gguf", "model": model}
    assert run_inline(ws, "submit", "submit", {"model_name": "tiny"}, inputs, outputs=["bundle"]) == "ok"
    card = (ws.artifact_path("submit", "bundle") / "MODEL_CARD.md").read_text()
    assert "submit: approved by me by OVERRIDE (tiny models) over AC-1 FAIL" in card
    assert card.count("| humaneval |") == 1
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")  # replaced after the approval
    assert run_inline(ws, "submit", "submit", {"model_name": "tiny"}, inputs, attempt=2, outputs=["bundle"]) == "failed"
    end = read_events(ws.job_log("submit.2"))[-1]
    assert "no longer holds" in end["error"] and "inputs.model" in end["error"]
