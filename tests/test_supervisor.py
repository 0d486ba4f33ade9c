"""Supervisor end to end: real detached processes, real kills, real files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from engine.events import EventWriter, read_events
from engine.inbox import (
    Cancel,
    Retry,
    Run,
    send_command,
    start_supervisor_detached,
    supervisor_identity,
)
from engine.procs import ProcIdentity, boot_id, start_ticks
from engine.state import load_state
from engine.workspace import Workspace

# A resumable unit-of-work job: 'units' steps of 'sleep' s, each recorded in the
# stage's work dir; a resumed attempt continues after the last recorded unit.
JOB = """
import os, sys, time, pathlib
work = pathlib.Path(os.environ["PMAT_WORK_DIR"])
done_file = work / "units"
units, sleep = int(sys.argv[1]), float(sys.argv[2])
done = len(done_file.read_text().split()) if done_file.exists() else 0
for i in range(done, units):
    time.sleep(sleep)
    with open(done_file, "a") as fh:
        fh.write(f"{i} "); fh.flush(); os.fsync(fh.fileno())
    print(f"PMAT_PROGRESS {i + 1} {units} units", flush=True)
with open(work / "completions", "a") as fh:
    fh.write("x")
"""


def stage(units: int, sleep: float, **extra) -> dict:
    return {"kind": "command", "params": {"argv": ["{python}", "-c", JOB, str(units), str(sleep)]},
            "memory_gb": 0.1, "duration_h": 0.01, **extra}


def make_ws(tmp_path: Path, stages: dict, **settings) -> Workspace:
    ws = Workspace(tmp_path / "ws").init()
    spec = {"name": "t", "settings": {"poll_interval_s": 0.1, "cancel_grace_s": 2, **settings}, "stages": stages}
    ws.spec_path.write_text(yaml.safe_dump(spec))
    return ws


def wait_for(cond, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def journal(ws: Workspace, kind: str | None = None) -> list[dict]:
    return [e for e in read_events(ws.journal_path) if kind is None or e["kind"] == kind]


@pytest.fixture
def supervisors():
    started: list[ProcIdentity] = []
    yield started
    for ident in started:
        ident.terminate(grace_s=5)


def start(ws: Workspace, supervisors: list) -> ProcIdentity:
    ident = start_supervisor_detached(ws)
    supervisors.append(ident)
    wait_for(lambda: supervisor_identity(ws) is not None, 30, "supervisor lock")
    return ident


def test_kill_supervisor_midjob_reattaches_and_job_finishes_once(tmp_path, supervisors):
    ws = make_ws(tmp_path, {"long": stage(10, 0.3)})
    sup = start(ws, supervisors)
    send_command(ws, Run(["long"]))
    wait_for(lambda: load_state(ws).stage("long").latest and load_state(ws).stage("long").latest.done >= 2, what="progress")
    os.kill(sup.pid, signal.SIGKILL)
    wait_for(lambda: not sup.alive(), 10, "supervisor death")
    job = load_state(ws).stage("long").latest
    assert ProcIdentity.from_dict(job.identity).alive()  # the job outlived its supervisor
    start(ws, supervisors)
    wait_for(lambda: load_state(ws).stage("long").status == "done", 60, "job done")
    assert [e["job_id"] for e in journal(ws, "reattached")] == ["long.1"]
    assert not journal(ws, "crashed")
    assert (ws.root / "work" / "long" / "completions").read_text() == "x"  # exactly once
    assert len(load_state(ws).stage("long").attempts) == 1


def test_killed_job_is_reported_crashed_and_resumed(tmp_path, supervisors):
    ws = make_ws(tmp_path, {"work": stage(8, 0.25)})
    start(ws, supervisors)
    send_command(ws, Run(["work"]))
    wait_for(lambda: (load_state(ws).stage("work").latest or None) and load_state(ws).stage("work").latest.done >= 3, what="progress")
    job = load_state(ws).stage("work").latest
    os.killpg(job.identity["pid"], signal.SIGKILL)
    wait_for(lambda: load_state(ws).stage("work").status == "done", 60, "resumed job done")
    crashed = journal(ws, "crashed")
    assert [c["job_id"] for c in crashed] == ["work.1"] and "without job_finished" in crashed[0]["reason"]
    st = load_state(ws).stage("work")
    assert [a.outcome for a in st.attempts] == ["crashed", "ok"]
    units = (ws.root / "work" / "work" / "units").read_text().split()
    assert units == [str(i) for i in range(8)]  # resumed, no unit done twice
    assert (ws.root / "work" / "work" / "completions").read_text() == "x"


def test_jobs_that_do_not_fit_together_run_one_after_the_other(tmp_path, supervisors):
    big = {"memory_gb": 6}
    ws = make_ws(tmp_path, {"one": stage(3, 0.3, **big), "two": stage(3, 0.3, **big)},
                 memory_budget_gb=10, memory_margin_gb=0.5)
    start(ws, supervisors)
    send_command(ws, Run(["one", "two"]))
    wait_for(lambda: all(load_state(ws).stage(s).status == "done" for s in ("one", "two")), 60, "both done")
    st = load_state(ws)
    one, two = st.stage("one").latest, st.stage("two").latest
    assert two.started_at >= one.finished_at - 0.05 or one.started_at >= two.finished_at - 0.05
    waits = [e for e in journal(ws, "waiting") if e["reason"].startswith("waiting for memory")]
    assert waits and "needs 6.0 GB" in waits[0]["reason"]


def test_gated_stage_waits_for_approval(tmp_path, supervisors):
    ws = make_ws(tmp_path, {"prep": stage(1, 0.05), "ship": stage(1, 0.05, after=["prep"], approval="required")})
    start(ws, supervisors)
    send_command(ws, Run(["ship"]))
    wait_for(lambda: any(e["reason"] == "needs approval" for e in journal(ws, "waiting")), 30, "approval wait")
    time.sleep(0.5)
    assert load_state(ws).stage("ship").status == "queued"
    res = subprocess.run([sys.executable, "-m", "engine.cli.main", "approve", "ship", "-w", str(ws.root)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    wait_for(lambda: load_state(ws).stage("ship").status == "done", 30, "ship done")
    grant = journal(ws, "approval_granted")[0]
    assert grant["target"] == "ship" and grant["by"] and "evidence" in grant


def test_cancel_and_retry(tmp_path, supervisors):
    ws = make_ws(tmp_path, {"slow": stage(50, 0.2)})
    start(ws, supervisors)
    send_command(ws, Run(["slow"]))
    wait_for(lambda: load_state(ws).stage("slow").status == "running", 30, "running")
    send_command(ws, Cancel("slow"))
    wait_for(lambda: load_state(ws).stage("slow").status == "cancelled", 30, "cancelled")
    time.sleep(0.5)
    assert len(load_state(ws).stage("slow").attempts) == 1  # a cancelled job is not resumed
    send_command(ws, Retry("slow.1"))
    wait_for(lambda: len(load_state(ws).stage("slow").attempts) == 2, 30, "retry launched")


def test_reused_pid_is_not_taken_for_the_job(tmp_path, supervisors):
    ws = make_ws(tmp_path, {"x": stage(1, 0.05)})
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        ticks = start_ticks(stranger.pid)
        fake = {"pid": stranger.pid, "start_ticks": ticks + 1, "boot_id": boot_id()}
        assert not ProcIdentity.from_dict(fake).alive()
        assert ProcIdentity.from_dict({**fake, "start_ticks": ticks}).alive()
        with EventWriter(ws.journal_path) as w:  # a journal saying x.1 runs as that pid
            w.emit("queued", stage="x")
            w.emit("launched", stage="x", job_id="x.1", attempt=1, identity=fake, reservation=0)
        start(ws, supervisors)
        wait_for(lambda: journal(ws, "crashed"), 30, "crash verdict")
        assert not journal(ws, "reattached")
        send_command(ws, Cancel("x"))
        time.sleep(1.0)
        assert stranger.poll() is None  # the stranger was never signalled
    finally:
        stranger.kill()
        stranger.wait()


def test_second_supervisor_refuses(tmp_path, supervisors):
    ws = make_ws(tmp_path, {"x": stage(1, 0.05)})
    start(ws, supervisors)
    res = subprocess.run([sys.executable, "-m", "engine.cli.main", "supervise", "-w", str(ws.root)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "already runs" in res.stderr


def test_a_command_is_read_as_it_was_sent(tmp_path):
    """Each command's name and keys are spelled once (engine.inbox): what the console or the CLI
    sends through the inbox is what the supervisor parses, and a bad record says why in one line."""
    from engine.inbox import COMMANDS, Approve, parse_command, queued_commands, read_command

    ws = Workspace(tmp_path / "ws").init()
    sent = [Run(["prep", "W-1"]), Approve("ship", {"inputs": {"model": "ab12"}}, "looked at it", "tiny models"),
            Approve("AC-1"), Cancel("prep.2"), Retry("prep")]
    for cmd in sent:
        send_command(ws, cmd)
    received = []
    for path in sorted(ws.commands_dir.glob("*.json")):
        record, by, refused = read_command(path, os.getuid())
        assert refused is None
        received.append(parse_command(record))
    assert received == sent == queued_commands(ws)
    assert Approve("AC-1").args() == {"target": "AC-1"}  # defaults are not written
    assert [COMMANDS[c.NAME].aimed("prep") for c in (Run, Cancel, Retry)] == [Run(["prep"]), Cancel("prep"), Retry("prep")]
    assert parse_command({"command": "launch"}) == "unknown command 'launch'"
    assert parse_command({"command": "run", "args": ["a"]}) == "command args must be a mapping, got list"
