"""Stage `sample`: kill -9 mid-run + resume == uninterrupted; eval splits refused unless overridden."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from engine.data import mbpp
from engine.events import read_events
from engine.sdk.base import JobSpec
from engine.sdk.run import params_hash, run_inline
from engine.workspace import Workspace

MBPP = mbpp.SHIPPED_DIR
PARAMS = dict(n=3, temperature=0.8, top_p=0.95, top_k=0, max_new_tokens=64, seed=5, strategy="asserts",
              data_path=str(MBPP), limit=8, unit_prompts=1, exec_workers=1)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One BLAS thread: same float reductions as the OMP_NUM_THREADS=1 subprocess, no oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def samples(ws: Workspace) -> list[dict]:
    return [json.loads(x) for x in (ws.artifact_path("sample", "samples") / "samples.jsonl").read_text().splitlines()]


def start(ws: Workspace, model: Path, attempt: int = 1) -> subprocess.Popen:
    """The stage as a real detached job process."""
    job = JobSpec(job_id=f"sample.{attempt}", stage="sample", kind="sample", attempt=attempt, workspace=str(ws.root),
                  params=PARAMS, inputs={"model": str(model)}, params_hash=params_hash(PARAMS), outputs=["samples"],
                  device="cpu")
    job.save(ws.job_file(job.job_id))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "engine.sdk.run", str(ws.job_file(job.job_id))], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_units(ws: Workspace, proc: subprocess.Popen, units: int) -> None:
    gen = ws.work_dir("sample") / "gen.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if gen.exists() and gen.read_bytes().count(b"\n") >= units * PARAMS["n"]:
            return
        time.sleep(0.002)


def test_kill9_then_resume_equals_uninterrupted(tmp_path: Path, tiny_model_dir: Path) -> None:
    whole = Workspace(tmp_path / "whole")
    assert run_inline(whole, "sample", "sample", PARAMS, {"model": tiny_model_dir}, outputs=["samples"]) == "ok"
    expected = samples(whole)
    assert len(expected) == PARAMS["limit"] * PARAMS["n"]
    assert {r["split"] for r in expected} == {"validation"}  # first task ids of train+validation: 511..
    assert all(r["verdict"]["status"] in ("passed", "failed", "error", "syntax_error", "timeout", "oom", "blocked")
               for r in expected)
    assert all(r["prompt"].startswith("<|im_start|>system") for r in expected)  # the prompt as sent

    ws = Workspace(tmp_path / "killed").init()
    proc = start(ws, tiny_model_dir)
    try:
        wait_for_units(ws, proc, 2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    gen = ws.work_dir("sample") / "gen.jsonl"
    assert proc.returncode == -signal.SIGKILL
    lines = gen.read_bytes().count(b"\n")
    assert 2 * PARAMS["n"] <= lines < len(expected), f"kill landed outside the run ({lines} lines)"
    assert not any(e["kind"] == "job_finished" for e in read_events(ws.job_log("sample.1")))
    # A torn write of the next unit: two of its three lines whole, the third cut short.
    have = {(r["task_id"], r["sample"]) for r in map(json.loads, gen.read_text().splitlines())}
    lines_whole = (whole.work_dir("sample") / "gen.jsonl").read_text().splitlines(keepends=True)
    nxt = [x for x in lines_whole if (json.loads(x)["task_id"], json.loads(x)["sample"]) not in have][:3]
    with open(gen, "a") as fh:
        fh.write(nxt[0] + nxt[1] + nxt[2][:25])

    assert run_inline(ws, "sample", "sample", PARAMS, {"model": tiny_model_dir}, attempt=2,
                      outputs=["samples"]) == "ok"
    assert samples(ws) == expected
    progress = [e for e in read_events(ws.job_log("sample.2")) if e["kind"] == "progress"]
    assert progress[0]["done"] == lines // PARAMS["n"] and progress[-1]["done"] == PARAMS["limit"]
    assert gen.read_bytes().count(b"\n") == len(expected) + 2  # only the torn unit generated twice


def test_eval_split_refused_unless_overridden(tmp_path: Path, tiny_model_dir: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    params = dict(PARAMS, n=1, max_new_tokens=4, limit=1, splits=["test"])
    assert run_inline(ws, "sample", "sample", params, {"model": tiny_model_dir}, outputs=["samples"]) == "failed"
    end = read_events(ws.job_log("sample.1"))[-1]
    assert "allow_eval_split" in end["error"] and "test" in end["error"]

    params["allow_eval_split"] = True
    assert run_inline(ws, "sample", "sample", params, {"model": tiny_model_dir}, attempt=2,
                      outputs=["samples"]) == "ok"
    meta = json.loads((ws.artifact_path("sample", "samples") / "meta.json").read_text())
    assert meta["eval_split_override"] == ["test"] and meta["params"]["allow_eval_split"] is True
    assert any(e["kind"] == "warning" and e.get("override") == ["test"] for e in read_events(ws.job_log("sample.2")))
    assert samples(ws)[0]["task_id"] == "Mbpp/11"
    ledger = [json.loads(x) for x in ws.ledger_path.read_text().splitlines()]
    assert ledger[-1]["eval_split_override"] == ["test"] and ledger[-1]["device"] == "cpu"


def test_sigterm_cancels_between_units(tmp_path: Path, tiny_model_dir: Path) -> None:
    ws = Workspace(tmp_path / "ws").init()
    proc = start(ws, tiny_model_dir)
    try:
        wait_for_units(ws, proc, 1)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 3  # engine.sdk.run's exit code for a cancelled job
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    end = read_events(ws.job_log("sample.1"))[-1]
    assert end["kind"] == "job_finished" and end["outcome"] == "cancelled"
    assert ws.work_dir("sample").joinpath("gen.jsonl").read_bytes().count(b"\n") < PARAMS["limit"] * PARAMS["n"]
