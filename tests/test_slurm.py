"""The Slurm executor against a real single-node Slurm (tests/slurm_fixture.py starts it)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from slurm_fixture import slurm_env  # noqa: F401 - the session fixture
from test_supervisor import JOB as UNITS  # units of work, each recorded once in the work dir

from engine.events import read_events
from engine.executors import Resources, job_handle
from engine.executors.slurm import SlurmExecutor, SlurmJob
from engine.sdk.base import JobSpec
from engine.sdk.run import params_hash
from engine.spec import SlurmSettings
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
    return [sys.executable, "-m", "engine.sdk.run", str(ws.job_file(job_id))]


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
    # a second submission of a finished attempt is a new job; of a queued one, that job (adopted)
    assert submit(ws, "train.1", "pass").slurm_id != h.slurm_id
    script = (ws.logs_dir / "jobs" / "train.1.sbatch").read_text()
    assert "engine.sdk.run" in script and "PYTHONPATH=" in script


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
    assert submit(ws, "b.1", "pass").slurm_id == small.slurm_id  # resubmitted after a lost journal: adopted
    assert small.signal_group(signal.SIGTERM)  # pending: cancelled outright
    wait_for(lambda: not small.alive(), what="the pending job to leave")
    assert not ws.job_log("b.1").exists()
    assert big.signal_group(signal.SIGTERM)
    wait_for(lambda: not big.alive(), what="the running job to end")
    ev = read_events(ws.job_log("a.1"))
    assert ev[-1]["kind"] == "job_finished" and ev[-1]["outcome"] == "cancelled", ev[-1]


def test_a_submission_slurm_refuses_fails_the_job_in_its_words(env, tmp_path: Path) -> None:
    from engine.executors import launch_job
    from engine.spec import parse_spec

    spec = parse_spec({"name": "t", "settings": {"executor": "slurm"}, "stages": {"a": {
        "kind": "command", "params": {"argv": ["true"]}, "memory_gb": 0.1, "duration_h": 0.1, "partition": "nosuch"}}})
    ws = Workspace(tmp_path / "ws").init()
    h = launch_job(spec, "a", "a.1", command_job(ws, "a.1", "print(1)"), ws=ws, reservation=1 << 20, gpus=[])
    assert not h.alive() and job_handle(h.as_dict()).end_reason() == h.end_reason()
    end = read_events(ws.job_log("a.1"))[-1]
    assert end["kind"] == "job_finished" and end["outcome"] == "failed"
    assert end["error"].startswith("slurm executor: sbatch for a.1 failed: ") and "partition" in end["error"]


# -- the supervisor with `executor: slurm` ----------------------------------------------------------


def test_supervisor_runs_stages_on_slurm_and_resubmits_a_lost_job(env, tmp_path: Path) -> None:
    """Two stages that each fill the node: one runs, the other shows ``PENDING (Resources)``; the
    running one's batch job is killed outright (no end in its log): crashed, with Slurm's end state
    in the reason, and resumed by a new submission that continues its units."""
    import yaml

    from engine.inbox import Run, send_command
    from engine.state import load_state
    from engine.supervisor import Supervisor

    ws = Workspace(tmp_path / "ws").init()
    stage = {"kind": "command", "params": {"argv": ["{python}", "-c", UNITS, "30", "0.2"]}, "memory_gb": 0.1,
             "duration_h": 0.05, "device": "cpu"}
    spec = {"name": "t", "settings": {"poll_interval_s": 0.2, "cancel_grace_s": 2, "executor": "slurm",
                                      "slurm": {"cpus_per_task": os.cpu_count()}},
            "stages": {"a": stage, "b": {**stage, "params": {"argv": ["{python}", "-c", UNITS, "2", "0.1"]}}}}
    ws.spec_path.write_text(yaml.safe_dump(spec))
    sup = Supervisor(ws)
    sup.start()
    try:
        send_command(ws, Run(["all"]))

        def ticked(cond):
            sup.tick()
            return cond()

        def journal(kind: str) -> list[dict]:
            return [e for e in read_events(ws.journal_path) if e["kind"] == kind]

        wait_for(lambda: ticked(lambda: len(journal("launched")) == 2), what="both stages submitted")
        first = {e["stage"]: e["identity"] for e in journal("launched")}
        assert {i["executor"] for i in first.values()} == {"slurm"}
        states = lambda: {(e["stage"], e["state"]) for e in journal("executor_state")}  # noqa: E731
        wait_for(lambda: ticked(lambda: any(s.startswith("RUNNING on ") for _, s in states())), what="one running")
        running = next(st for st, s in states() if s.startswith("RUNNING"))
        waiting = "b" if running == "a" else "a"
        wait_for(lambda: ticked(lambda: (waiting, "PENDING (Resources)") in states()), what="PENDING (Resources)")
        assert load_state(ws).stage(waiting).latest.executor_state == "PENDING (Resources)"
        wait_for(lambda: ticked(lambda: (ws.work_dir("a") / "units").exists()), 120, what="a's first unit")
        pid = next(e["pid"] for e in read_events(ws.job_log("a.1")) if e["kind"] == "job_started")
        os.kill(pid, signal.SIGKILL)  # the job's process dies without a word (an OOM kill, a lost node)
        wait_for(lambda: ticked(lambda: journal("crashed")), 60, what="the crash")
        assert f"; slurm job {first['a']['slurm_id']} " in journal("crashed")[0]["reason"]
        wait_for(lambda: ticked(lambda: load_state(ws).stage("a").done and load_state(ws).stage("b").done), 180,
                 what="both stages done")
    finally:
        sup.release()
    st = load_state(ws).stage("a")
    assert [x.outcome for x in st.attempts] == ["crashed", "ok"]
    assert st.attempts[1].identity["slurm_id"] != first["a"]["slurm_id"]  # resumed by resubmitting
    assert sorted(map(int, (ws.work_dir("a") / "units").read_text().split())) == list(range(30))  # each unit once
