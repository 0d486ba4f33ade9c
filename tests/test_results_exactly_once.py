"""Exactly-once results: a job killed at any instant of its commit, resumed, or re-run after its
log was lost, leaves one ledger record that counts (issue 21, item 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.chain import append_chained, verify_chain
from engine.events import EventWriter, read_events
from engine.results import make_record, read_ledger
from engine.sdk.base import JobSpec, StageContext, StageFailed
from engine.sdk.run import params_hash
from engine.workspace import Workspace

PARAMS = {"window": 16, "stride": 16, "max_tokens": 64}


def launch(ws: Workspace, attempt: int, model: Path, text: Path, fault: str | None = None) -> int:
    """Journal and run one attempt of the ``ppl`` job as the supervisor would (a real process)."""
    job = JobSpec(job_id=f"ppl.{attempt}", stage="ppl", kind="perplexity", attempt=attempt, workspace=str(ws.root),
                  params=PARAMS, inputs={"model": str(model), "text": str(text)}, params_hash=params_hash(PARAMS),
                  device="cpu")
    job.save(ws.job_file(job.job_id))
    append_chained(ws.journal_path, [{"kind": "launched", "stage": "ppl", "job_id": job.job_id, "identity": None}])
    env = {k: v for k, v in os.environ.items() if k != "PMAT_FAULT_AT"}
    if fault:
        env["PMAT_FAULT_AT"] = fault
    return subprocess.run([sys.executable, "-m", "engine.sdk.run", str(ws.job_file(job.job_id))],
                          env=env, capture_output=True, timeout=120).returncode


def counted(ws: Workspace) -> list[dict]:
    return [e for e in read_ledger(ws) if e["ignored"] is None]


@pytest.fixture()
def text(tmp_path: Path) -> Path:
    p = tmp_path / "text.txt"
    p.write_text("def add(a, b):\n    return a + b\n" * 20)
    return p


@pytest.mark.parametrize("fault", ["results_announcing", "results_announced", "results_committed"])
def test_a_kill_at_the_commit_then_resume_leaves_one_record(tmp_path, tiny_model_dir, text, fault):
    ws = Workspace(tmp_path / "ws").init()
    assert launch(ws, 1, tiny_model_dir, text, fault) == -signal.SIGKILL
    before = verify_chain(ws.ledger_path).records
    assert len(before) == (1 if fault == "results_committed" else 0)
    assert counted(ws) == []  # nothing counts before a job_finished lists it
    assert launch(ws, 2, tiny_model_dir, text) == 0
    lines = verify_chain(ws.ledger_path)
    assert lines.ok and len(lines.records) == 1
    (rec,) = counted(ws)
    assert rec["benchmark"] == "perplexity" and rec["job_id"] == ("ppl.1" if before else "ppl.2")
    finished = read_events(ws.job_log("ppl.2"))[-1]
    assert finished["kind"] == "job_finished" and finished["results"][0]["digest"] == rec["digest"]


def test_a_rerun_after_the_job_log_was_deleted_adds_no_second_record(tmp_path, tiny_model_dir, text):
    ws = Workspace(tmp_path / "ws").init()
    assert launch(ws, 1, tiny_model_dir, text) == 0
    (first,) = counted(ws)
    ws.job_log("ppl.1").unlink()
    assert counted(ws) == []  # its commit is gone with the log
    assert launch(ws, 2, tiny_model_dir, text) == 0
    assert len(verify_chain(ws.ledger_path).records) == 1
    (again,) = counted(ws)
    assert again["digest"] == first["digest"]
    ws.job_log("ppl.2").write_bytes(ws.job_log("ppl.2").read_bytes()[:-20])  # truncated log
    assert launch(ws, 3, tiny_model_dir, text) == 0
    assert len(verify_chain(ws.ledger_path).records) == 1 and len(counted(ws)) == 1


@pytest.mark.parametrize("bad", [{"metrics": {"loss": None}}, {"metrics": {"ok": True}}, {"benchmark": 3},
                                 {"model_hash": 7}])
def test_every_stage_records_through_one_checked_path(tmp_path: Path, bad: dict) -> None:
    """What readers would ignore is refused where a stage records it (all kinds, not only eval's make_record)."""
    ws = Workspace(tmp_path / "ws").init()
    job = JobSpec(job_id="s.1", stage="s", kind="command", attempt=1, workspace=str(ws.root), params={}, inputs={},
                  params_hash="p")
    ctx = StageContext(job, EventWriter(ws.job_log(job.job_id)), ws)
    good = {"benchmark": "b", "model_hash": None, "model_path": None, "metrics": {"x": 1.0}}
    ctx.record_result(good)
    with pytest.raises(StageFailed, match="^s: result record .* refused: malformed record"):
        ctx.record_result({**good, **bad})
    assert [r["benchmark"] for r in ctx.pending_results] == ["b"]
    with pytest.raises(ValueError, match="malformed record"):
        make_record(**{"dataset_hash": None, "protocol": {}, **good, **bad})
