"""Gates read only results of the checkpoint they gate; approvals lapse with their evidence."""

from __future__ import annotations

import json

import pytest
import yaml

from engine.approvals import approval_current, stage_evidence
from engine.gates import evaluate_expr, evaluate_gates, metric_key
from engine.spec import load_spec
from engine.workspace import Workspace, content_hash

STEP = {"kind": "command", "params": {"argv": ["{python}", "-c", "pass"]}, "memory_gb": 0.1, "duration_h": 0.1}


def setup_ws(tmp_path):
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
            "submit": {**STEP, "after": ["final"], "inputs": {}, "approval": "required", "work_item": "PMAT-011"},
        },
        "acceptance": {
            "AC-022": {"checkpoint": "final.output", "expr": "humaneval.pass_at_1 >= 0.85 and mbpp.pass_at_1 >= 0.80"},
            "AC-023": {"checkpoints": {"fp16": "final.output", "q4": "quant.output"},
                       "expr": "fp16.humaneval.pass_at_1 - q4.humaneval.pass_at_1 < 0.02"},
        },
    }
    ws.spec_path.write_text(yaml.safe_dump(spec))
    return ws, load_spec(ws.spec_path), teacher


def publish_model(ws, tmp_path, stage, content: bytes):
    src = tmp_path / f"src-{stage}-{len(content)}"
    src.mkdir()
    (src / "model.safetensors").write_bytes(content)
    return ws.publish(stage, "output", src)


def record(ws, bench, model_hash, value, path, **extra):
    line = {"benchmark": bench, "model_hash": model_hash, "model_path": str(path),
            "metrics": {"pass@1": value}, "protocol": {"temperature": 0.0}, **extra}
    with open(ws.ledger_path, "a") as fh:
        fh.write(json.dumps(line) + "\n")


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
    path = ws.artifact_path("final", "output")
    record(ws, "humaneval", m["sha256"], 0.8537, path)
    record(ws, "mbpp", m["sha256"], 0.762, path)
    g = evaluate_gates(spec, ws)["AC-022"]
    assert g.outcome == "fail" and g.values == {"humaneval.pass_at_1": 0.8537, "mbpp.pass_at_1": 0.762}
    assert g.evidence == ["ledger:3", "ledger:4"]
    record(ws, "mbpp", m["sha256"], 0.81, path)
    assert evaluate_gates(spec, ws)["AC-022"].outcome == "pass"


def test_a_gate_failing_on_present_data_fails_despite_missing_data(tmp_path):
    ws, spec, _ = setup_ws(tmp_path)
    m = publish_model(ws, tmp_path, "final", b"7B final")
    record(ws, "humaneval", m["sha256"], 0.5, ws.artifact_path("final", "output"))
    g = evaluate_gates(spec, ws)["AC-022"]
    assert g.outcome == "fail" and g.missing == ["mbpp.pass_at_1"]
    assert "humaneval.pass_at_1 = 0.5" in g.reason and "no data: mbpp.pass_at_1" in g.reason


def test_results_of_an_older_checkpoint_are_stale(tmp_path):
    ws, spec, _ = setup_ws(tmp_path)
    old = publish_model(ws, tmp_path, "final", b"v1")
    path = ws.artifact_path("final", "output")
    record(ws, "humaneval", old["sha256"], 0.9, path)
    record(ws, "mbpp", old["sha256"], 0.9, path)
    assert evaluate_gates(spec, ws)["AC-022"].outcome == "pass"
    publish_model(ws, tmp_path, "final", b"v2 retrained")
    g = evaluate_gates(spec, ws)["AC-022"]
    assert g.outcome == "stale" and "stale" in g.reason


def test_comparison_across_checkpoints(tmp_path):
    ws, spec, _ = setup_ws(tmp_path)
    fp16 = publish_model(ws, tmp_path, "final", b"fp16")
    q4 = publish_model(ws, tmp_path, "quant", b"q4")
    record(ws, "humaneval", fp16["sha256"], 0.86, ws.artifact_path("final", "output"))
    record(ws, "humaneval", q4["sha256"], 0.83, ws.artifact_path("quant", "output"))
    g = evaluate_gates(spec, ws)["AC-023"]
    assert g.outcome == "fail"
    record(ws, "humaneval", q4["sha256"], 0.85, ws.artifact_path("quant", "output"))
    assert evaluate_gates(spec, ws)["AC-023"].outcome == "pass"


def test_approval_lapses_on_new_checkpoint(tmp_path):
    ws, spec, _ = setup_ws(tmp_path)
    m = publish_model(ws, tmp_path, "final", b"v1")
    path = ws.artifact_path("final", "output")
    record(ws, "humaneval", m["sha256"], 0.9, path)
    record(ws, "mbpp", m["sha256"], 0.9, path)
    approval = {"target": "submit", "evidence": stage_evidence(spec, ws, "submit")}
    assert approval["evidence"]["gates"]["AC-022"]["outcome"] == "pass"
    assert approval_current(spec, ws, "submit", approval)
    assert not approval_current(spec, ws, "submit", None)
    publish_model(ws, tmp_path, "final", b"v2, retrained after the approval")
    assert not approval_current(spec, ws, "submit", approval)
    assert approval_current(spec, ws, "final", None)  # a stage with no gate needs no approval
