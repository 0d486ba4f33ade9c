"""Gates read only results with provenance of the checkpoint and protocol they gate;
approvals lapse with their evidence and refuse a failing gate without an override."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.approvals import (
    approval_current,
    approval_seal,
    check_approvable,
    revoked,
    stage_evidence,
)
from engine.chain import append_chained
from engine.data import protocols
from engine.events import EventWriter
from engine.gates import evaluate_expr, evaluate_gates, metric_key
from engine.results import commit_results, record_key
from engine.spec import load_spec
from engine.workspace import Workspace, content_hash

STEP = {"kind": "tiny_model", "params": {}, "memory_gb": 0.1, "duration_h": 0.1}
HE = {"humaneval": "humaneval", "mbpp": "mbpp_leaderboard"}


def setup_ws(tmp_path: Path, ac022_protocol: dict[str, Any] | None = None):
    ws = Workspace(tmp_path / "ws").init()
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "w.bin").write_bytes(b"32B teacher")
    spec = {
        "name": "g",
        "models": {"teacher": {"path": str(teacher)}},
        "work_items": {"PMAT-011": {"title": "final", "acceptance": ["AC-022"]}},
        "stages": {
            "final": {**STEP, "work_item": "PMAT-011"},
            "quant": {**STEP, "work_item": "PMAT-011"},
            "submit": {"kind": "submit", "params": {"model_name": "m"}, "approval": "required", "work_item": "PMAT-011",
                       "inputs": {"model": "final.model", "gguf": "quant.model"}, "memory_gb": 0.1, "duration_h": 0.1},
        },
        "acceptance": {
            "AC-022": {"checkpoint": "final.model", "protocol": ac022_protocol or HE,
                       "expr": "humaneval.pass_at_1 >= 0.85 and mbpp.pass_at_1 >= 0.80"},
            "AC-023": {"checkpoints": {"fp16": "final.model", "q4": "quant.model"},
                       "expr": "fp16.humaneval.pass_at_1 - q4.humaneval.pass_at_1 < 0.02"},
        },
    }
    ws.spec_path.write_text(yaml.safe_dump(spec))
    return ws, load_spec(ws.spec_path), teacher


def publish_model(ws: Workspace, tmp_path: Path, stage: str, content: bytes) -> dict[str, Any]:
    src = tmp_path / f"src-{stage}-{len(content)}-{time.monotonic_ns()}"
    src.mkdir()
    (src / "model.safetensors").write_bytes(content)
    return ws.publish(stage, "model", src)


def eval_record(bench: str, model_hash: str, value: float, path: Path | str, *, protocol_id: str | None = None,
                n_tasks: int | None = None, **overrides: Any) -> dict[str, Any]:
    """A record as the eval stage writes it: protocol, pinned data, every task, outcomes that recompute."""
    proto = protocols.resolve(protocol_id or HE.get(bench, bench), overrides=overrides or None)
    total = proto.n_tasks if n_tasks is None else n_tasks
    passed = round(value * total)
    per = {f"T/{i}": ["passed" if i < passed else "failed"] for i in range(total)}
    return {"benchmark": bench, "model_hash": model_hash, "model_path": str(path), "dataset_hash": proto.data_sha256,
            "protocol": proto.as_dict(), "protocol_id": proto.id, "protocol_digest": proto.digest(),
            "n_problems": total, "per_problem": per, "metrics": {"pass@1": passed / total}}


def commit_as_job(ws: Workspace, stage: str, *records: dict[str, Any]) -> list[dict[str, str]]:
    """Commit records the way a launched job does: journaled launch, announced lines, job_finished."""
    n = len(list((ws.logs_dir / "jobs").glob(f"{stage}.*.jsonl"))) + 1
    job_id = f"{stage}.{n}"
    append_chained(ws.journal_path, [{"ts": time.time(), "kind": "launched", "stage": stage, "job_id": job_id,
                                      "identity": None}])
    # a job's parameters decide its key: here the numbers stand for them (the same numbers: a re-run)
    keyed = [{"job_id": job_id, "stage": stage, **r, "key": record_key(stage, "eval", json.dumps(r["metrics"]), {}, i, r)}
             for i, r in enumerate(records)]
    with EventWriter(ws.job_log(job_id)) as ev:
        ev.emit("job_started", job_id=job_id, stage=stage)
        results = commit_results(ws, job_id, stage, keyed, lambda e: ev.emit("result", results=e))
        ev.emit("job_finished", outcome="ok", error=None, results=results)
    return results


def grant(stage: str, evidence: dict[str, Any], override: str | None = None, by: str = "me") -> dict[str, Any]:
    """An approval as the supervisor journals it (sealed)."""
    return {"ts": time.time(), "kind": "approval_granted", "target": stage, "by": by, "evidence": evidence,
            "override": override, "seal": approval_seal(stage, by, evidence, override)}


def record(ws: Workspace, bench: str, model_hash: str, value: float, path: Path | str, **kw: Any) -> None:
    commit_as_job(ws, f"eval_{bench}", eval_record(bench, model_hash, value, path, **kw))


def scored(tmp_path: Path, humaneval: float, mbpp: float, weights: bytes = b"v1"):
    """A workspace whose final checkpoint has committed humaneval and mbpp results."""
    ws, spec, _ = setup_ws(tmp_path)
    m = publish_model(ws, tmp_path, "final", weights)
    path = ws.artifact_path("final", "model")
    record(ws, "humaneval", m["sha256"], humaneval, path)
    record(ws, "mbpp", m["sha256"], mbpp, path)
    return ws, spec, m, path


def revoked_with_a_partial_run(tmp_path: Path) -> Workspace:
    """``submit`` approved by alice, then the model retrained (the approval lapses) and a partial
    humaneval run of the new one recorded (a record the gate ignores): what status and the console show."""
    ws, spec, _, _ = scored(tmp_path, 0.9, 0.9)
    evidence, refusal = check_approvable(spec, ws, "submit")
    assert refusal is None
    append_chained(ws.journal_path, [grant("submit", evidence, by="alice")])
    m = publish_model(ws, tmp_path, "final", b"v2, retrained after the approval")
    record(ws, "humaneval", m["sha256"], 0.9, ws.artifact_path("final", "model"), n_tasks=8)
    return ws


def test_expression_language():
    vals = {"a.x": 1.0, "b.y": 2.0}
    assert evaluate_expr("a.x < b.y and max(a.x, b.y) == 2", vals.get)
    assert evaluate_expr("b.y - a.x >= 1 or not a.x", vals.get)
    with pytest.raises(ValueError):
        evaluate_expr("__import__('os')", vals.get)
    # three-valued: a missing name leaves the verdict open unless the rest settles it
    assert evaluate_expr("a.x < 2 and c.z > 1", vals.get) is None
    assert evaluate_expr("a.x > 2 and c.z > 1", vals.get) is False
    assert evaluate_expr("a.x < 2 or c.z > 1", vals.get) is True
    assert evaluate_expr("max(a.x, c.z) > 0", vals.get) is None
    assert metric_key("pass@1") == "pass_at_1" and metric_key("rewards/margins") == "rewards_margins"


def test_teacher_score_never_satisfies_the_gate(tmp_path):
    ws, spec, teacher = setup_ws(tmp_path)
    m = publish_model(ws, tmp_path, "final", b"7B final")
    record(ws, "humaneval", content_hash(teacher), 0.9085, teacher)  # the 32B teacher's score
    record(ws, "mbpp", content_hash(teacher), 0.88, teacher)
    g = evaluate_gates(spec, ws)["AC-022"]
    assert g.outcome == "no_data" and g.missing == ["humaneval.pass_at_1", "mbpp.pass_at_1"]
    path = ws.artifact_path("final", "model")
    record(ws, "humaneval", m["sha256"], 0.8537, path)
    record(ws, "mbpp", m["sha256"], 0.762, path)
    g = evaluate_gates(spec, ws)["AC-022"]
    assert g.outcome == "fail" and g.values == {"humaneval.pass_at_1": 140 / 164, "mbpp.pass_at_1": 381 / 500}
    assert g.evidence == ["ledger:3", "ledger:4"] and g.ignored == []
    record(ws, "mbpp", m["sha256"], 0.81, path)
    assert evaluate_gates(spec, ws)["AC-022"].outcome == "pass"


def test_a_gate_failing_on_present_data_fails_despite_missing_data(tmp_path):
    ws, spec, _ = setup_ws(tmp_path)
    m = publish_model(ws, tmp_path, "final", b"7B final")
    record(ws, "humaneval", m["sha256"], 0.5, ws.artifact_path("final", "model"))
    g = evaluate_gates(spec, ws)["AC-022"]
    assert g.outcome == "fail" and g.missing == ["mbpp.pass_at_1"]
    assert "humaneval.pass_at_1 = 0.5" in g.reason and "no data: mbpp.pass_at_1" in g.reason


def test_results_of_an_older_checkpoint_are_stale(tmp_path):
    ws, spec, _, _ = scored(tmp_path, 0.9, 0.9)
    assert evaluate_gates(spec, ws)["AC-022"].outcome == "pass"
    publish_model(ws, tmp_path, "final", b"v2 retrained")
    g = evaluate_gates(spec, ws)["AC-022"]
    assert g.outcome == "stale" and "older version of the checkpoint" in g.reason


def test_a_protocol_change_in_the_spec_makes_results_stale_with_the_difference(tmp_path):
    ws, spec, _, _ = scored(tmp_path, 0.9, 0.9)
    assert evaluate_gates(spec, ws)["AC-022"].outcome == "pass"
    ws2, spec2, _ = setup_ws(tmp_path / "b", {**HE, "humaneval": {"id": "humaneval", "max_new_tokens": 512}})
    ws.spec_path.write_text(ws2.spec_path.read_text())
    g = evaluate_gates(load_spec(ws.spec_path), ws)["AC-022"]
    assert g.outcome == "stale" and "protocol changed: max_new_tokens 768 -> 512" in g.reason
    assert any("ignored: protocol differs: max_new_tokens 768 -> 512" in i for i in g.ignored)


def test_comparison_across_checkpoints(tmp_path):
    ws, spec, _ = setup_ws(tmp_path)
    fp16 = publish_model(ws, tmp_path, "final", b"fp16")
    q4 = publish_model(ws, tmp_path, "quant", b"q4")
    record(ws, "humaneval", fp16["sha256"], 0.86, ws.artifact_path("final", "model"))
    record(ws, "humaneval", q4["sha256"], 0.83, ws.artifact_path("quant", "model"))
    assert evaluate_gates(spec, ws)["AC-023"].outcome == "fail"
    record(ws, "humaneval", q4["sha256"], 0.85, ws.artifact_path("quant", "model"))
    assert evaluate_gates(spec, ws)["AC-023"].outcome == "pass"


def test_approval_lapses_on_new_checkpoint_and_revokes_the_stage(tmp_path):
    ws, spec, _, _ = scored(tmp_path, 0.9, 0.9)
    evidence, refusal = check_approvable(spec, ws, "submit")
    assert refusal is None and evidence == stage_evidence(spec, ws, "submit")
    approval = grant("submit", evidence)
    assert evidence["gates"]["AC-022"]["outcome"] == "pass"
    assert approval_current(spec, ws, "submit", approval) and revoked(spec, ws, "submit", approval) is None
    assert not approval_current(spec, ws, "submit", None)
    assert "no valid seal" in revoked(spec, ws, "submit", {**approval, "override": "added by hand"})
    publish_model(ws, tmp_path, "final", b"v2, retrained after the approval")
    assert not approval_current(spec, ws, "submit", approval)
    assert "inputs.model" in revoked(spec, ws, "submit", approval) and "revoked" in revoked(spec, ws, "submit", approval)
    assert approval_current(spec, ws, "final", None)  # a stage with no gate needs no approval


@pytest.mark.parametrize("state", ["fail", "no_data", "stale"])
def test_approving_a_gate_that_does_not_pass_needs_an_override(tmp_path, state):
    ws, spec, _ = setup_ws(tmp_path)
    m = publish_model(ws, tmp_path, "final", b"v1")
    path = ws.artifact_path("final", "model")
    if state != "no_data":
        record(ws, "humaneval", m["sha256"], 0.9 if state == "stale" else 0.1, path)
        record(ws, "mbpp", m["sha256"], 0.9, path)
    if state == "stale":
        publish_model(ws, tmp_path, "final", b"v2")
    _, refusal = check_approvable(spec, ws, "submit")
    assert refusal and f"AC-022 is {state.upper().replace('_', ' ')}" in refusal and "--override" in refusal
    assert check_approvable(spec, ws, "submit", override="   ")[1] == refusal
    assert check_approvable(spec, ws, "submit", override="tiny demo models")[1] is None


def test_read_only_callers_write_no_hash_cache_and_approval_rehashes_in_full(tmp_path):
    ws, spec, _ = setup_ws(tmp_path)
    m = publish_model(ws, tmp_path, "final", b"weights")
    record(ws, "humaneval", m["sha256"], 0.9, ws.artifact_path("final", "model"))
    cache = ws.root / "state" / "hash-cache.json"
    evaluate_gates(spec, ws)
    stage_evidence(spec, ws, "submit")
    assert not cache.exists()  # status and the console only read
    check_approvable(spec, ws, "submit", override="x")
    entry = json.loads(cache.read_text())[str(ws.artifact_path("final", "model") / "model.safetensors")]
    st = (ws.artifact_path("final", "model") / "model.safetensors").stat()
    assert entry[0] == [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
