"""The submission bundle: complete, checksummed, its card honest; tampering is caught."""

from __future__ import annotations

import shutil

import yaml

from engine.bundle import validate_bundle
from engine.stages.run import run_inline
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
