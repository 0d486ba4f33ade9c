"""The Slurm executor against a real single-node Slurm (tests/slurm_fixture.py starts it)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from slurm_fixture import slurm_env  # noqa: F401 - the session fixture

from engine.events import read_events
from engine.executors import Resources, job_handle
from engine.executors.slurm import SlurmExecutor, SlurmJob, SlurmSettings
from engine.stages.base import JobSpec
from engine.stages.run import params_hash
from engine.workspace import Workspace

STEP = "import sys,time\nfor i in range({n}):\n    print('PMAT_PROGRESS', i + 1, {n}, 'steps', flush=True)\n    time.sleep({dt})\n"


@pytest.fixture
def env(slurm_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:  # noqa: F811
    monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])
    return slurm_env


def command_job(ws: Workspace, job_id: str, code: str) -> list[str]:
    """A `command` stage job file running ``code``; the argv a local job would run."""
    params = {"argv": ["{python}", "-c", code]}
    stage, _, attempt = job_id.rpartition(".")
    job = JobSpec(job_id=job_id, stage=stage, kind="command", attempt=int(attempt), workspace=str(ws.root),
                  params=params, inputs={}, params_hash=params_hash(params), device="cpu")
    job.save(ws.job_file(job_id))
    return [sys.executable, "-m", "engine.stages.run", str(ws.job_file(job_id))]


def submit(ws: Workspace, job_id: str, code: str, **settings) -> SlurmJob:
    ex = SlurmExecutor(SlurmSettings(**settings))
    res = Resources(memory_bytes=200 << 20, time_limit_s=300, env={"PYTHONPATH": str(Path.cwd())})
    return ex.submit(job_id, command_job(ws, job_id, code), cwd=ws.root, log_path=ws.logs_dir / "jobs" / f"{job_id}.out",
                     res=res)


def wait_for(cond, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def kinds(ws: Workspace, job_id: str) -> list[str]:
    return [e["kind"] for e in read_events(ws.job_log(job_id))]


def test_job_runs_on_slurm_and_logs_to_the_shared_workspace(env, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws").init()
    h = submit(ws, "train.1", STEP.format(n=3, dt=0.2))
    assert h.slurm_id.isdigit()
    again = job_handle(h.as_dict())  # what a restarted supervisor rebuilds from the journal
    assert isinstance(again, SlurmJob) and again.slurm_id == h.slurm_id
    wait_for(lambda: not again.alive(), what="the batch job to end")
    ev = read_events(ws.job_log("train.1"))
    assert [e for e in ev if e["kind"] == "progress"][-1]["done"] == 3
    assert ev[-1]["kind"] == "job_finished" and ev[-1]["outcome"] == "ok"
    assert again.status() == "COMPLETED" and again.end_reason() == f"slurm job {h.slurm_id} COMPLETED"
    script = (ws.logs_dir / "jobs" / "train.1.sbatch").read_text()
    assert "engine.stages.run" in script and "PYTHONPATH=" in script


def test_pending_reason_and_cancel(env, tmp_path: Path) -> None:
    """A job that fills the node makes the next one wait: squeue's reason is shown as
    ``PENDING (Resources)``; SIGTERM reaches the running job (it logs its cancel), a pending one is
    removed from the queue."""
    ws = Workspace(tmp_path / "ws").init()
    cpus = str(os.cpu_count())
    big = submit(ws, "a.1", STEP.format(n=200, dt=0.2), cpus_per_task=int(cpus))
    wait_for(lambda: big.query()[0] == "RUNNING", what="the first job to run")
    wait_for(lambda: "progress" in kinds(ws, "a.1"), what="the first job's progress")
    small = submit(ws, "b.1", STEP.format(n=1, dt=0), cpus_per_task=1)
    wait_for(lambda: small.query()[1] not in ("None", ""), what="a pending reason")
    assert small.status() == "PENDING (Resources)"
    assert small.signal_group(signal.SIGTERM)  # pending: cancelled outright
    wait_for(lambda: not small.alive(), what="the pending job to leave")
    assert not ws.job_log("b.1").exists()
    assert big.signal_group(signal.SIGTERM)
    wait_for(lambda: not big.alive(), what="the running job to end")
    ev = read_events(ws.job_log("a.1"))
    assert ev[-1]["kind"] == "job_finished" and ev[-1]["outcome"] == "cancelled", ev[-1]
