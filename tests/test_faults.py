"""Faults (issue 21): lost commands, silent deaths, a demo that gives up, logs that crash the
fold, a dying sampler, loose permissions. Real detached supervisors and jobs, real kills, real
filesystem faults (chattr, a full tmpfs) where this machine allows them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from test_supervisor import JOB, journal, make_ws, stage, start, supervisors, wait_for  # noqa: F401 - fixture

from engine.chain import append_chained
from engine.inbox import Run, send_command, supervisor_down, supervisor_identity
from engine.procs import boot_id, spawn_detached
from engine.state import load_state
from engine.supervisor import Supervisor
from engine.workspace import UnsafeWorkspace, Workspace

ROOT = os.geteuid() == 0
PMAT = [sys.executable, "-m", "engine.cli.main"]


def pmat(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*PMAT, *args], capture_output=True, text=True, timeout=timeout)


def done(ws: Workspace, *stages: str) -> bool:
    st = load_state(ws)
    return all(st.stage(s).status == "done" for s in stages)


def dead_identity() -> dict:
    return {"pid": 999_999, "start_ticks": 1, "boot_id": boot_id()}


# -- item 2: a command received but not applied is replayed after a restart ----------------
def test_command_received_before_a_kill_is_applied_after_restart(tmp_path, supervisors):  # noqa: F811 - the fixture
    ws = make_ws(tmp_path, {"a": stage(1, 0.05)})
    cid = send_command(ws, Run(["a"]))
    # the instant a kill -9 left behind: received journaled, the effect not, the file still there
    append_chained(ws.journal_path, [{"ts": time.time(), "kind": "command_received", "id": cid,
                                      "command": "run", "args": {"targets": ["a"]}, "by": "root"}])
    start(ws, supervisors)
    wait_for(lambda: done(ws, "a"), 60, "the replayed command's stage to finish")
    assert [e["id"] for e in journal(ws, "command_received")] == [cid]  # received once, applied once
    assert [e["id"] for e in journal(ws, "command_applied")] == [cid]
    assert not list(ws.commands_dir.glob("*.json"))


def test_command_effects_and_verdict_are_one_append_and_the_file_goes_after(tmp_path, supervisors):  # noqa: F811 - the fixture
    ws = make_ws(tmp_path, {"a": stage(1, 0.05), "b": stage(1, 0.05, after=["a"])})
    start(ws, supervisors)
    cid = send_command(ws, Run(["b"]))
    wait_for(lambda: done(ws, "a", "b"), 60, "both stages")
    lines = ws.journal_path.read_bytes().splitlines()
    recs = [json.loads(x) for x in lines]
    at = next(i for i, r in enumerate(recs) if r.get("id") == cid)
    assert [r["kind"] for r in recs[at:at + 4]] == ["command_received", "queued", "queued", "command_applied"]
    assert len({r["ts"] for r in recs[at:at + 4]}) <= 4 and all("prev" in r for r in recs)  # hash-chained
    assert not (ws.commands_dir / f"{cid}.json").exists()


@pytest.mark.skipif(not ROOT, reason="needs chown")
def test_commands_only_from_owner_files_and_sender_is_the_owner(tmp_path, supervisors):  # noqa: F811 - the fixture
    ws = make_ws(tmp_path, {"a": stage(1, 0.05), "b": stage(1, 0.05)})
    other = send_command(ws, Run(["a"]))
    os.chown(ws.commands_dir / f"{other}.json", 65534, 65534)
    loose = send_command(ws, Run(["a"]))
    os.chmod(ws.commands_dir / f"{loose}.json", 0o622)
    (ws.commands_dir / "0-a-dir.json").mkdir()  # not a file: refused once, and the rounds go on
    good = ws.commands_dir / "0-forged.json"
    good.write_text(json.dumps({"id": "forged", "command": "run", "args": {"targets": ["b"]}, "by": "mallory"}))
    good.chmod(0o600)
    start(ws, supervisors)
    wait_for(lambda: done(ws, "b"), 60, "b")
    rejected = {e["id"]: e["reason"] for e in journal(ws, "command_rejected")}
    assert "not by the workspace owner" in rejected[other] and "writable by group or others" in rejected[loose]
    assert "not a regular file" in rejected["0-a-dir"]
    received = {e["id"]: e for e in journal(ws, "command_received")}
    assert received["forged"]["by"] == "root"  # from the file's owner, not its content
    assert load_state(ws).stage("a").status == "pending"


# -- item 3: loud failures -------------------------------------------------------------------
@pytest.mark.skipif(not ROOT or not shutil.which("chattr"), reason="needs chattr +i")
def test_immutable_workspace_is_survived_and_reported_with_the_path(tmp_path, supervisors):  # noqa: F811 - the fixture
    """The whole workspace immutable for a while, a job running: the supervisor lives on, the job
    (which cannot write its log) crashes and is resumed, and the error is journaled afterwards."""
    ws = make_ws(tmp_path, {"long": stage(12, 0.3), "after": stage(1, 0.05, after=["long"])})
    sup = start(ws, supervisors)
    send_command(ws, Run(["after"]))
    wait_for(lambda: load_state(ws).stage("long").status == "running", 30, "long running")
    if subprocess.run(["chattr", "-R", "+i", str(ws.root)], capture_output=True).returncode:
        pytest.skip("this filesystem has no immutable flag")
    try:
        time.sleep(4)
        assert sup.alive()
    finally:
        subprocess.run(["chattr", "-R", "-i", str(ws.root)], check=True)
    wait_for(lambda: done(ws, "after"), 90, "the pipeline, once the workspace is writable again")
    assert [a.outcome for a in load_state(ws).stage("long").attempts] == ["crashed", "ok"]
    err = journal(ws, "supervisor_error")[0]
    assert "Operation not permitted" in err["message"] and str(ws.journal_path) in err["message"]
    assert str(ws.journal_path) in (ws.logs_dir / "supervisor.out").read_text()


def test_dead_supervisor_is_noticed_with_how_to_restart(tmp_path, supervisors):  # noqa: F811 - the fixture
    ws = make_ws(tmp_path, {"a": stage(1, 0.05)})
    sup = start(ws, supervisors)
    assert supervisor_down(ws) is None
    os.kill(sup.pid, signal.SIGKILL)
    wait_for(lambda: not sup.alive(), 10, "supervisor death")
    msg = supervisor_down(ws)
    assert msg and "not running" in msg and f"pmat supervise --detach -w {ws.root}" in msg and "\n" not in msg


@pytest.fixture
def small_disk(tmp_path):
    """A 1.3 GB ext4 on a sparse loop image (root only): room to admit a stage, and a disk that
    ``fallocate`` fills at once without writing (or holding in memory) the bytes."""
    image, mnt = tmp_path / "disk.img", tmp_path / "disk"
    mnt.mkdir(mode=0o700)
    if not ROOT or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root and mkfs.ext4")
    with open(image, "wb") as fh:
        fh.truncate(1300 << 20)
    ok = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], capture_output=True).returncode == 0 and \
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True).returncode == 0
    if not ok:
        pytest.skip("cannot mount a loop device here")
    mnt.chmod(0o700)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


# the stage: waits for the test's go, writes 2 MiB (removing a partial file, as careful writers do)
FILL = """
import os, time
work = os.environ['PMAT_WORK_DIR']
while not os.path.exists(os.path.join(work, '..', '..', 'go')):
    time.sleep(0.05)
blob = os.path.join(work, 'blob')
try:
    open(blob, 'wb').write(os.urandom(2 << 20))
except OSError:
    os.remove(blob)
    raise
"""


def test_stage_failed_for_lack_of_space_resumes_when_space_returns(small_disk, supervisors):  # noqa: F811 - the fixture
    ws = make_ws(small_disk, {"w": {**stage(1, 0.01), "params": {"argv": ["{python}", "-c", FILL]}}}, disk_margin_gb=0)
    start(ws, supervisors)
    send_command(ws, Run(["w"]))
    wait_for(lambda: load_state(ws).stage("w").status == "running", 60, "w admitted and running")
    filler = small_disk / "filler"  # another writer takes the disk, all but 1 MiB
    vfs = os.statvfs(small_disk)
    subprocess.run(["fallocate", "-l", str(vfs.f_bavail * vfs.f_frsize - (1 << 20)), str(filler)], check=True)
    (ws.root / "go").touch()
    wait_for(lambda: any(e["reason"].startswith("disk full") for e in journal(ws, "waiting")), 60, "disk-full wait")
    reason = next(e["reason"] for e in journal(ws, "waiting") if e["reason"].startswith("disk full"))
    assert str(ws.root) in reason and "resumes when space returns" in reason
    time.sleep(1.0)
    assert len(load_state(ws).stage("w").attempts) == 1  # no retry while the disk is full
    filler.unlink()
    wait_for(lambda: done(ws, "w"), 60, "w after space returned")
    assert [a.outcome for a in load_state(ws).stage("w").attempts] == ["failed", "ok"]


# -- item 4: the demo waits through a resumable crash and a dead supervisor -----------------
def test_demo_resumes_a_crash_the_supervisor_did_not_requeue(tmp_path):
    ws = make_ws(tmp_path, {"a": stage(2, 0.1), "b": stage(1, 0.05, after=["a"])})
    now = time.time()
    append_chained(ws.journal_path, [  # a supervisor killed between journaling the crash and the resume
        {"ts": now, "kind": "queued", "stage": "a", "reason": "requested"},
        {"ts": now, "kind": "launched", "stage": "a", "job_id": "a.1", "attempt": 1, "identity": dead_identity(), "reservation": 0},
        {"ts": now, "kind": "crashed", "stage": "a", "job_id": "a.1", "reason": "process exited"},
    ])
    res = pmat("demo", "--headless", "-w", str(ws.root), "--timeout", "60", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert [a.outcome for a in load_state(ws).stage("a").attempts] == ["crashed", "ok"]


def test_demo_notices_a_dead_supervisor_and_starts_it_again(tmp_path):
    ws = make_ws(tmp_path, {"a": stage(6, 0.25), "b": stage(1, 0.05, after=["a"])})
    demo = subprocess.Popen([*PMAT, "demo", "--headless", "-w", str(ws.root), "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: load_state(ws).stage("a").status == "running" and supervisor_identity(ws), 60, "a running")
        os.kill(supervisor_identity(ws).pid, signal.SIGKILL)
        out, _ = demo.communicate(timeout=90)
    finally:
        demo.kill()
    assert demo.returncode == 0, out
    assert "is not running" in out and "started the supervisor again" in out
    assert done(ws, "a", "b") and len(load_state(ws).stage("a").attempts) == 1  # re-attached, not re-run


# -- item 5: the fold validates each event ---------------------------------------------------
BAD_JOURNAL = ['{"kind":"launched"}', '{"kind":"queued","stage":5,"ts":1}', "[1,2]",
               '{"kind":"launched","ts":1,"stage":"a","job_id":"a","identity":{}}',
               '{"kind":"crashed","job_id":"a.1"}', '{"kind":"launched","ts":1,"stage":"a","job_id":"a.7","identity":"x"}']
BAD_JOB = ['{"kind":"metric"}', '{"kind":"progress","ts":1}', '{"kind":"resource","ts":1,"rss":"big"}',
           '{"kind":"job_finished","ts":1,"outcome":"maybe"}']


def test_damaged_logs_are_reported_with_file_and_line_and_skipped(tmp_path, supervisors):  # noqa: F811 - the fixture
    ws = make_ws(tmp_path, {"a": stage(1, 0.05), "b": stage(1, 0.05, after=["a"])})
    with open(ws.journal_path, "a") as fh:
        fh.write("\n".join(BAD_JOURNAL) + "\n")
    log = ws.job_log("a.1")
    log.write_text("\n".join(BAD_JOB) + "\n")
    res = pmat("status", "-w", str(ws.root))
    assert res.returncode == 0, res.stderr
    st = load_state(ws)
    assert st.bad_events == len(BAD_JOURNAL) + len(BAD_JOB)
    assert f"{ws.journal_path}:1: launched: 'ts' missing" in st.damage[0]
    assert any(d.startswith(f"{log}:4: job_finished: outcome 'maybe'") for d in st.damage)
    log.unlink()
    sup = start(ws, supervisors)
    send_command(ws, Run(["b"]))
    wait_for(lambda: done(ws, "a", "b"), 60, "a and b despite the damage")
    assert sup.alive()
    assert any("log line(s) skipped" in e["message"] for e in journal(ws, "supervisor_error"))


def test_hand_appended_approval_breaks_the_chain_and_does_not_count(tmp_path, supervisors):  # noqa: F811 - the fixture
    ws = make_ws(tmp_path, {"ship": stage(1, 0.05, approval="required")})
    start(ws, supervisors)
    send_command(ws, Run(["ship"]))
    wait_for(lambda: any(e["reason"] == "needs approval" for e in journal(ws, "waiting")), 30, "approval wait")
    with open(ws.journal_path, "a") as fh:
        fh.write(json.dumps({"ts": time.time(), "kind": "approval_granted", "target": "ship", "by": "x",
                             "evidence": {"inputs": {}}}) + "\n")
    wait_for(lambda: any("journal chain broken" in e["message"] for e in journal(ws, "supervisor_error")), 30, "break report")
    time.sleep(1.0)
    st = load_state(ws)
    assert st.chain_break and "supervisor.jsonl:" in st.chain_break and "ship" not in st.approvals
    assert st.stage("ship").status == "queued"


# -- item 6: the resource sampler outlives a half-imported torch -----------------------------
SAMPLER = """
import sys, time, types, pathlib
sys.modules["torch"] = types.ModuleType("torch")  # what another thread's `import torch` looks like midway
import engine.sdk.run as run
from engine.events import EventWriter, read_events
run.RESOURCE_INTERVAL_S = 0.05
log = pathlib.Path(sys.argv[1])
s = run._ResourceSampler(EventWriter(log))
s.start(); time.sleep(0.6)
print(s.is_alive(), sum(e["kind"] == "resource" for e in read_events(log)),
      sum(e["kind"] == "warning" for e in read_events(log)))
"""


def test_resource_sampler_survives_a_half_imported_torch(tmp_path):
    res = subprocess.run([sys.executable, "-c", SAMPLER, str(tmp_path / "j.1.jsonl")], capture_output=True, text=True)
    alive, resources, warnings = res.stdout.split()
    assert alive == "True" and int(resources) >= 5 and int(warnings) <= 1, res.stdout + res.stderr


# -- item 10: owner-only files whatever the umask; unsafe workspaces refused ------------------
def test_published_artifacts_and_job_files_are_owner_only_under_umask_002(tmp_path):
    from engine.sdk.run import run_inline

    old = os.umask(0o002)
    try:
        ws = Workspace(tmp_path / "ws")
        writer = "import os; d = os.environ['PMAT_WORK_DIR']; open(d + '/output', 'w').write('x')"
        assert run_inline(ws, "c", "command", {"argv": [sys.executable, "-c", writer], "publish_output": True},
                          outputs=["output"]) == "ok"
        art = ws.artifact_path("c", "output")
        assert oct(art.stat().st_mode & 0o777) == oct(0o600)
        spawned = spawn_detached([sys.executable, "-c", "open('made', 'w').write('x')"], log_path=tmp_path / "o.log", cwd=tmp_path)
        wait_for(lambda: (tmp_path / "made").exists() and not spawned.alive(), 30, "the detached writer")
        assert oct((tmp_path / "made").stat().st_mode & 0o777) == oct(0o600)
    finally:
        os.umask(old)


def test_workspace_others_can_write_is_refused_in_one_line(tmp_path):
    ws = make_ws(tmp_path, {"a": stage(1, 0.05)})
    ws.root.chmod(0o775)
    with pytest.raises(UnsafeWorkspace, match="writable by group"):
        Supervisor(ws)
    for args in (["status"], ["supervise"], ["run", "a"]):
        res = pmat(*args, "-w", str(ws.root))
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "chmod -R go-w" in res.stderr, (args, res.stderr)
    ws.root.chmod(0o700)
    ws.spec_path.chmod(0o666)
    assert pmat("status", "-w", str(ws.root)).returncode == 2


# -- item 8: a stage whose inputs a run would fail on is held, the reason naming the file ----
def test_stage_with_a_broken_model_input_is_held_naming_the_file(tmp_path, tiny_model_dir, supervisors):  # noqa: F811 - the fixture
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "tokenizer.json").unlink()
    ws = make_ws(tmp_path, {"ppl": {"kind": "perplexity", "inputs": {"model": "model:base", "text": "dataset:t"},
                                    "params": {"window": 32, "stride": 32, "max_tokens": 64}, "memory_gb": 0.1, "duration_h": 0.01},
                            "gone": {"kind": "perplexity", "inputs": {"model": "model:gone", "text": "dataset:t"},
                                     "params": {"window": 32, "stride": 32, "max_tokens": 64}, "memory_gb": 0.1, "duration_h": 0.01}})
    spec = __import__("yaml").safe_load(ws.spec_path.read_text())
    (tmp_path / "t.txt").write_text("def f():\n    return 1\n" * 20)
    spec.update(models={"base": {"path": str(model)}, "gone": {"path": str(tmp_path / "nowhere")}},
                datasets={"t": {"path": str(tmp_path / "t.txt")}})
    ws.spec_path.write_text(__import__("yaml").safe_dump(spec))
    start(ws, supervisors)
    send_command(ws, Run(["ppl", "gone"]))
    wait_for(lambda: len([e for e in journal(ws, "waiting") if e["reason"].startswith("bad input")]) == 2, 60, "held")
    reasons = {e["stage"]: e["reason"] for e in journal(ws, "waiting") if e["reason"].startswith("bad input")}
    assert reasons["ppl"] == f"bad input: inputs.model: {model}: no tokenizer (expected tokenizer.json, tokenizer.model, or vocab.json + merges.txt)"
    assert reasons["gone"].startswith(f"bad input: inputs.model: {tmp_path / 'nowhere'}: does not exist")
    assert not journal(ws, "launched")


# -- zero lost or duplicated work under repeated kill -9 of the supervisor --------------------
def test_supervisor_killed_again_and_again_loses_and_repeats_nothing(tmp_path, supervisors):  # noqa: F811 - the fixture
    stages = {"a": stage(3, 0.1), "b": stage(3, 0.1, after=["a"]), "c": stage(3, 0.1, after=["a"]),
              "d": stage(2, 0.1, after=["b", "c"]), "e": stage(2, 0.1)}
    ws = make_ws(tmp_path, stages, poll_interval_s=0.05)
    sent = [send_command(ws, Run([s])) for s in ("d", "e")]
    rng = __import__("random").Random(21)
    deadline = time.monotonic() + 90
    while not done(ws, *stages) and time.monotonic() < deadline:
        sup = start(ws, supervisors)
        time.sleep(rng.uniform(0.05, 0.6))
        sent.append(send_command(ws, Run(["all"])))
        time.sleep(rng.uniform(0.0, 0.1))
        os.kill(sup.pid, signal.SIGKILL)
        wait_for(lambda s=sup: not s.alive(), 10, "supervisor death")
    start(ws, supervisors)
    wait_for(lambda: done(ws, *stages) and not list(ws.commands_dir.glob("*.json")), 60, "every stage and command")
    for s in stages:  # each stage's program completed exactly once, in one attempt
        assert (ws.root / "work" / s / "completions").read_text() == "x", s
        assert len(load_state(ws).stage(s).attempts) == 1, s
    applied = [e["id"] for e in journal(ws, "command_applied")]
    assert sorted(applied) == sorted(sent)  # every command applied, none twice


def test_job_spawned_but_not_journaled_is_not_launched_twice(tmp_path, supervisors):  # noqa: F811 - the fixture
    """A supervisor killed between spawning x.1 and journaling 'launched': the job lives on (here
    slow to write its first event) and the next supervisor must not start x.1 a second time."""
    import fcntl

    from engine.sdk.base import JobSpec

    ws = make_ws(tmp_path, {"x": stage(2, 0.1)})
    params = {"argv": [sys.executable, "-c", JOB, "2", "0.1"]}
    JobSpec(job_id="x.1", stage="x", kind="command", attempt=1, workspace=str(ws.root), params=params, inputs={},
            params_hash="-").save(ws.job_file("x.1"))
    append_chained(ws.journal_path, [{"ts": time.time(), "kind": "queued", "stage": "x", "reason": "requested"},
                                     {"ts": time.time(), "kind": "admitted", "stage": "x", "job_id": "x.1", "reservation": 0}])
    lock = os.open(ws.job_file("x.1").with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    spawn_detached(["sh", "-c", f'sleep 2; exec "{sys.executable}" -m engine.sdk.run "{ws.job_file("x.1")}"'],
                   log_path=ws.logs_dir / "jobs" / "x.1.out", cwd=ws.root, keep_fds=(lock,))
    os.close(lock)
    start(ws, supervisors)
    wait_for(lambda: done(ws, "x"), 60, "x")
    time.sleep(0.5)
    assert (ws.root / "work" / "x" / "completions").read_text() == "x"
    assert not journal(ws, "launched") and len(load_state(ws).stage("x").attempts) == 1


def test_demo_ends_when_a_failure_blocks_everything_left(tmp_path):
    fail = {**stage(1, 0.01), "params": {"argv": ["{python}", "-c", "raise SystemExit(3)"]}}
    ws = make_ws(tmp_path, {"a": fail, "b": stage(1, 0.05, after=["a"]), "c": stage(1, 0.05)})
    t0 = time.monotonic()
    res = pmat("demo", "--headless", "-w", str(ws.root), "--timeout", "120", timeout=150)
    assert res.returncode == 1 and "pipeline: NOT every stage finished" in res.stdout, res.stdout + res.stderr
    assert time.monotonic() - t0 < 60 and done(ws, "c")


def test_deleted_or_truncated_job_log_does_not_rerun_a_finished_stage(tmp_path, supervisors):  # noqa: F811 - the fixture
    ws = make_ws(tmp_path, {"a": stage(1, 0.05), "b": stage(1, 0.05)})
    sup = start(ws, supervisors)
    send_command(ws, Run(["a", "b"]))
    wait_for(lambda: done(ws, "a", "b") and len(journal(ws, "finished")) == 2, 60, "a and b, their ends journaled")
    sup.terminate(grace_s=5)
    ws.job_log("a.1").unlink()
    log = ws.job_log("b.1")
    log.write_bytes(log.read_bytes()[: len(log.read_bytes()) // 2])
    start(ws, supervisors)
    send_command(ws, Run(["a", "b"]))
    time.sleep(2.0)
    st = load_state(ws)
    assert [a.outcome for a in st.stage("a").attempts] == ["ok"] and [a.outcome for a in st.stage("b").attempts] == ["ok"]
    assert (ws.root / "work" / "a" / "completions").read_text() == "x" and not journal(ws, "crashed")
