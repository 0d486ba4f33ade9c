"""Disk as a resource (engine/disk.py): admission waits for room, retention removes consumed checkpoints."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from engine.disk import consumers, evidence, output_bytes, tombstone_path, weight_bytes
from engine.events import read_events
from engine.gen.memory import param_count
from engine.inbox import Run, send_command, start_supervisor_detached, supervisor_identity
from engine.rehearsal import SHAPES
from engine.spec import load_spec, pipeline_path
from engine.state import PipelineState
from engine.workspace import Workspace

TINY = {"kind": "random_model", "params": {"shape": "tiny", "materialise": "disk"}, "memory_gb": 1, "duration_h": 0.001}
TEXT = "pmat://pipelines/data/mbpp/mbpp.jsonl"


def perplexity(model: str) -> dict:
    return {"kind": "perplexity", "inputs": {"model": model, "text": "dataset:text"},
            "params": {"window": 64, "stride": 64, "max_tokens": 256}, "memory_gb": 1, "duration_h": 0.001}


def make_ws(tmp_path: Path, stages: dict, **settings) -> Workspace:
    ws = Workspace(tmp_path / "ws").init()
    spec = {"name": "t", "settings": {"poll_interval_s": 0.1, "memory_margin_gb": 0, **settings},
            "datasets": {"text": {"path": TEXT}}, "stages": stages}
    ws.spec_path.write_text(yaml.safe_dump(spec))
    return ws


def journal(ws: Workspace, kind: str) -> list[dict]:
    return [e for e in read_events(ws.journal_path) if e["kind"] == kind]


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def supervised():
    started = []

    def start(ws: Workspace) -> None:
        started.append(start_supervisor_detached(ws))
        wait_for(lambda: supervisor_identity(ws) is not None, 30, "supervisor lock")
        send_command(ws, Run(["all"]))

    yield start
    for ident in started:
        ident.terminate(grace_s=5)


def test_output_estimates_follow_the_input_checkpoint_and_the_shape(tmp_path: Path) -> None:
    spec = load_spec(pipeline_path("rehearsal"))
    ws = Workspace(tmp_path / "ws").init()
    assert output_bytes(spec, ws, "student") == 2 * param_count(asdict(SHAPES["7b"]))  # ~15.2 GB
    assert output_bytes(spec, ws, "teacher") < 1 << 21  # drawn at load: nothing on disk
    base = ws.artifact_path("student", "model")
    base.mkdir(parents=True)
    (base / "model.safetensors").write_bytes(b"\0" * 1000)
    (base / "config.json").write_text("{}")
    assert weight_bytes(base) == 1000
    assert output_bytes(spec, ws, "merge_sft") == 1000 + (1 << 30)
    assert consumers(spec, "student", "model")[:3] == ["sft", "sample", "baseline_humaneval"]  # via model:base
    assert "ties" in consumers(spec, "merge_sft", "model")
    assert evidence(spec) == {"quantize.gguf"}
    real = load_spec(pipeline_path("pmat"))
    assert {"quantize.gguf", "prune.model", "ties.model", "merge_sft.model", "student.model"} - evidence(real) == {
        "student.model"} and "slerp.model" in evidence(real)


def test_only_model_checkpoints_are_retention_candidates(tmp_path: Path) -> None:
    from engine.disk import _is_checkpoint

    data = tmp_path / "data.jsonl"
    data.write_text("{}\n")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 8)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 8)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert [_is_checkpoint(p) for p in (data, adapter, model, gguf)] == [False, False, True, True]
    assert weight_bytes(data) == 0 and weight_bytes(gguf) == 4


def test_a_stage_whose_outputs_do_not_fit_waits_and_says_why(tmp_path: Path, supervised) -> None:
    ws = make_ws(tmp_path, {"ckpt": TINY}, disk_margin_gb=1e6)
    supervised(ws)
    ev = wait_for(lambda: [e for e in journal(ws, "waiting") if e["reason"].startswith("disk: needs")], 60, "disk wait")
    assert "GB free after the 1e+06 GB margin" in ev[0]["reason"]
    assert not journal(ws, "launched")


def test_consumed_checkpoint_is_removed_with_its_hash_and_kept_one_stays(tmp_path: Path, supervised) -> None:
    ws = make_ws(tmp_path, {"ckpt": TINY, "kept": {**TINY, "keep": True},
                            "use_ckpt": perplexity("ckpt.model"), "use_kept": perplexity("kept.model")})
    supervised(ws)
    removed = wait_for(lambda: journal(ws, "artifact_removed"), 240, "retention")
    assert [(r["stage"], r["artifact"]) for r in removed] == [("ckpt", "model")]
    tomb = json.loads(tombstone_path(ws, "ckpt", "model").read_text())
    assert tomb["sha256"] == ws.manifest("ckpt", "model")["sha256"] and tomb["bytes"] > 0
    assert "use_ckpt" in tomb["reason"]
    assert not ws.artifact_path("ckpt", "model").exists()
    state = PipelineState(ws)
    wait_for(lambda: state.refresh() is not None and all(state.stage(s).done for s in ("kept", "use_kept")),
             240, "the kept checkpoint's consumer")
    time.sleep(1.0)
    assert ws.artifact_path("kept", "model").exists() and weight_bytes(ws.artifact_path("kept", "model")) > 0
