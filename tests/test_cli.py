"""CLI on a real workspace: init, status (why-blocked), logs, bad input exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import yaml

from engine.chain import append_chained
from engine.sdk.run import run_inline
from engine.workspace import Workspace


def pmat(*args, check=True):
    res = subprocess.run([sys.executable, "-m", "engine.cli.main", *map(str, args)], capture_output=True, text=True, timeout=120)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def test_status_explains_every_stage(tmp_path):
    ws = Workspace(tmp_path / "ws").init()
    step = {"kind": "command", "params": {"argv": ["{python}", "-c", "print('PMAT_PROGRESS 3 3 items')"]}, "memory_gb": 0.1}
    ws.spec_path.write_text(yaml.safe_dump({"name": "cli", "stages": {
        "first": {**step, "duration_h": 1},
        "second": {**step, "duration_h": 2, "after": ["first"]},
        "gated": {**step, "duration_h": 1, "after": ["first"], "approval": "required"},
    }}))
    assert run_inline(ws, "first", "command", step["params"]) == "ok"
    data = json.loads(pmat("status", "--json", "-w", ws.root).stdout)
    rows = {r["stage"]: r for r in data["rows"]}
    assert rows["first"]["status"] == "done" and rows["first"]["done"] == 3
    assert rows["second"]["reason"].startswith("ready (not requested")
    assert rows["gated"]["reason"] == "needs approval"
    assert data["critical_path"] == ["first", "second"] and data["supervisor_pid"] is None
    text = pmat("status", "-w", ws.root).stdout
    assert "supervisor NOT running" in text and "needs approval" in text
    logs = pmat("logs", "first", "-w", ws.root).stdout
    assert "job_started" in logs and "job_finished" in logs


def test_bad_input_exits_2_with_one_line(tmp_path):
    res = pmat("status", "-w", tmp_path / "nowhere", check=False)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no pipeline spec" in res.stderr
    pmat("init", tmp_path / "ws", "--pipeline", "demo")
    res = pmat("init", tmp_path / "ws", "--pipeline", "demo", check=False)
    assert res.returncode == 2 and "already exists" in res.stderr
    res = pmat("logs", "nojob", "-w", tmp_path / "ws", check=False)
    assert res.returncode == 2 and "unknown stage or job 'nojob'" in res.stderr


def _two_stage_ws(tmp_path):
    ws = Workspace(tmp_path / "ws").init()
    step = {"kind": "command", "params": {"argv": ["{python}", "-c", "print('PMAT_PROGRESS 3 3 items')"]}, "memory_gb": 0.1}
    ws.spec_path.write_text(yaml.safe_dump({
        "name": "cli", "work_items": {"W-1": {"title": "w", "acceptance": ["AC-001"]}},
        "stages": {"first": {**step, "duration_h": 1},
                   "gated": {**step, "duration_h": 1, "after": ["first"], "approval": "required", "work_item": "W-1"}},
        "acceptance": {"AC-001": {"description": "d", "work_item": "W-1", "checkpoint": "first.output",
                                  "expr": "x.y >= 1"}}}))
    assert run_inline(ws, "first", "command", step["params"]) == "ok"
    return ws


def test_refusals_exit_2_with_did_you_mean_without_a_supervisor(tmp_path):
    ws = _two_stage_ws(tmp_path)
    for args, said in ((("logs", "frist"), "did you mean first"), (("run", "gatd"), "did you mean gated"),
                       (("approve", "AC-01"), "did you mean AC-001"), (("retry", "frst"), "did you mean first"),
                       (("cancel", "first"), "first is done; nothing to cancel"),
                       (("retry", "first"), "nothing to retry"), (("run", "first"), "nothing to start"),
                       (("approve", "first"), "needs no approval"), (("logs", "gated"), "has not run yet")):
        res = pmat(*args, "-w", ws.root, check=False)
        assert res.returncode == 2 and said in res.stderr and res.stderr.count("\n") == 1, (args, res.stderr)
    assert list(ws.commands_dir.iterdir()) == []  # nothing was queued for a supervisor
    pmat("supervise", "--detach", "-w", ws.root)  # the same refusals with a supervisor running
    try:
        for args in (("run", "gatd"), ("approve", "AC-01"), ("cancel", "first")):
            res = pmat(*args, "-w", ws.root, check=False)
            assert res.returncode == 2 and res.stderr.count("\n") == 1, (args, res.stderr)
        res = pmat("approve", "gated", "-w", ws.root, check=False)  # its criterion has no data
        assert res.returncode == 2 and "--override" in res.stderr
    finally:
        from engine.inbox import supervisor_identity

        ident = supervisor_identity(ws)
        if ident is not None:
            ident.terminate(grace_s=5)


def test_json_errors_are_json(tmp_path):
    res = pmat("status", "--json", "-w", tmp_path / "nowhere", check=False)
    assert res.returncode == 2 and res.stderr == ""
    assert "no pipeline spec" in json.loads(res.stdout)["error"]
    res = pmat("stauts", check=False)
    assert res.returncode == 2 and "did you mean status?" in res.stderr and res.stderr.count("\n") == 1


def test_status_imports_no_ml_library(tmp_path):
    ws = _two_stage_ws(tmp_path)
    probe = ("import sys; from engine.cli.main import main; main(['status', '-w', sys.argv[1]]);"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'trl', 'peft'}))")
    res = subprocess.run([sys.executable, "-c", probe, str(ws.root)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip().splitlines()[-1] == "[]", res.stdout[-300:]


def test_logs_are_for_people_follow_ends_and_pipe_closes_quietly(tmp_path):
    ws = _two_stage_ws(tmp_path)
    log = ws.job_log("first.1")
    with log.open("a") as fh:  # a training step: its progress, two metrics and a resource tick
        for line in ({"kind": "progress", "done": 4, "total": 9, "unit": "steps"},
                     {"kind": "metric", "name": "loss", "value": 0.69314718055994, "step": 4},
                     {"kind": "metric", "name": "rewards/margins", "value": 0.1234567891234, "step": 4},
                     {"kind": "resource", "rss": 742141952}):
            fh.write(json.dumps({"ts": 1.0, **line}) + "\n")
    out = pmat("logs", "first", "-w", ws.root).stdout
    assert "step         4/9 steps (44%)  loss 0.6931 · rewards/margins 0.1235" in out
    assert "707.8 MB" not in out and "707.8 MB" in pmat("logs", "first", "--all", "-w", ws.root).stdout
    ws.job_log("first.1").with_suffix(".out").write_text("Traceback (most recent call last):\nValueError: boom\n")
    assert "ValueError: boom" in pmat("logs", "first", "--out", "-w", ws.root).stdout
    for _ in range(2000):  # a long log into a pipe that closes after one line
        with log.open("a") as fh:
            fh.write(json.dumps({"ts": 1.0, "kind": "warning", "message": "x" * 80}) + "\n")
    res = subprocess.run(f"{sys.executable} -m engine.cli.main logs first -w {ws.root} | head -1",
                         shell=True, capture_output=True, text=True, timeout=60)
    assert res.stderr == "" and res.stdout.count("\n") == 1
    live = ws.job_log("second.1")  # a job still running: -f follows it and ends when it finishes
    live.write_text(json.dumps({"ts": 1.0, "kind": "job_started", "job_id": "second.1", "stage": "first"}) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli.main", "logs", "second.1", "-f", "-w", str(ws.root)],
                            stdout=subprocess.PIPE, text=True)
    time.sleep(2)
    assert proc.poll() is None
    with live.open("a") as fh:
        fh.write(json.dumps({"ts": 2.0, "kind": "job_finished", "outcome": "ok"}) + "\n")
    assert proc.wait(timeout=10) == 0
    assert "job_finished" in proc.stdout.read()


def test_make_console_skips_setup_when_the_venv_is_current(tmp_path):
    import os
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "scripts").mkdir()
    for name in ("Makefile", "pyproject.toml", "scripts/setup.sh"):
        shutil.copy(root / name, tmp_path / name)
    (tmp_path / ".venv").mkdir()

    def plan() -> str:
        return subprocess.run(["make", "-n", "console"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    assert "setup.sh" in plan()  # never set up
    (tmp_path / ".venv" / ".setup-done").touch()
    assert "setup.sh" not in plan() and "pmat demo" in plan()
    later = time.time() + 5
    os.utime(tmp_path / "pyproject.toml", (later, later))  # the dependencies changed: set up again
    assert "setup.sh" in plan()


def test_a_run_command_waiting_in_the_inbox_shows_as_requested(tmp_path):
    ws = _two_stage_ws(tmp_path)
    ws.spec_path.write_text(ws.spec_path.read_text().replace("approval: required", "approval: none"))
    assert "queued command run" in pmat("run", "gated", "-w", ws.root).stdout  # no supervisor runs
    rows = {r["stage"]: r for r in json.loads(pmat("status", "--json", "-w", ws.root).stdout)["rows"]}
    assert rows["gated"]["reason"] == "requested: waiting for a supervisor (pmat supervise)"


def test_check_names_missing_sandbox_layers_as_a_notice(tmp_path):
    """Without bubblewrap and unshare on PATH the spec is still ok, with the sandbox's one line."""
    ws = tmp_path / "ws"
    pmat("init", ws, "--pipeline", "demo")
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}  # a PATH with neither bwrap nor unshare
    res = subprocess.run([sys.executable, "-m", "engine.cli.main", "check", "-w", ws], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok (" in res.stdout, res.stderr
    assert res.stderr.startswith("pmat: notice: sandbox: missing isolation layers: bubblewrap")
    assert len(res.stderr.splitlines()) == 1


def _tree(root) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_status_shows_a_revoked_approval_and_ignored_records_read_only(tmp_path):
    """A granted approval whose evidence changed is shown as revoked with the reason, in text and
    JSON; records that did not count are listed with why; status writes nothing."""
    from test_gates import revoked_with_a_partial_run

    ws = revoked_with_a_partial_run(tmp_path)
    before = _tree(ws.root)
    data = json.loads(pmat("status", "--json", "-w", ws.root).stdout)
    row = {r["stage"]: r for r in data["rows"]}["submit"]
    assert row["approval"] == "revoked" and "inputs.model" in row["revoked"], row
    ignored = data["gates"]["AC-022"]["ignored"]
    assert any("8 of 164 tasks" in why for why in ignored), ignored
    text = pmat("status", "-w", ws.root).stdout
    assert "REVOKED: approval of submit lapsed (" in text and "approved by alice" in text
    assert _tree(ws.root) == before  # read-only


def test_an_os_error_is_one_line_naming_the_path_exit_2(tmp_path):
    """A workspace whose layout cannot be written (here: commands/ is a file) gives no traceback."""
    ws = _two_stage_ws(tmp_path)
    shutil.rmtree(ws.commands_dir)
    ws.commands_dir.write_text("")
    res = pmat("run", "gated", "-w", ws.root, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-500:]
    assert res.stderr.count("\n") == 1 and str(ws.commands_dir) in res.stderr, res.stderr


def test_status_says_a_dead_supervisor_damaged_logs_and_where_a_job_runs(tmp_path):
    """Why the supervisor stopped and how to restart it; a damaged line and both chains' breaks
    in one warning line (details in --json); a Slurm attempt's executor, id and state."""
    ws = _two_stage_ws(tmp_path)
    (ws.logs_dir / "supervisor.out").write_text("tick\nsupervisor stopped: out of memory\n")
    append_chained(ws.journal_path, [
        {"ts": time.time(), "kind": "queued", "stage": "gated", "reason": "requested"},
        {"ts": time.time(), "kind": "launched", "stage": "gated", "job_id": "gated.1", "attempt": 1,
         "identity": {"executor": "slurm", "slurm_id": "41", "submitted_at": time.time(), "gpus": [0, 1]}},
        {"ts": time.time(), "kind": "executor_state", "job_id": "gated.1", "state": "PENDING (Resources)"}])
    with open(ws.journal_path, "a") as fh:
        fh.write('{"kind": "launched", "stage": 3}\n')
    ws.ledger_path.write_text('{"benchmark": "x", "metrics": {}}\n')
    res = pmat("status", "-w", ws.root)
    down = next(line for line in res.stdout.splitlines() if line.startswith("SUPERVISOR DOWN: "))
    assert "out of memory" in down and "pmat supervise --detach" in down, res.stdout
    warning = next(line for line in res.stdout.splitlines() if line.startswith("WARNING: "))
    assert f"{ws.journal_path}:5" in warning and "1 damaged log line(s)" in warning, warning
    assert f"ledger chain broken: {ws.ledger_path}:1" in warning, warning
    gated = next(line for line in res.stdout.splitlines() if line.startswith(" gated") or line.startswith("*gated"))
    assert "[slurm 41 PENDING (Resources) gpus 0,1]" in gated, res.stdout
    data = json.loads(pmat("status", "--json", "-w", ws.root).stdout)
    assert "out of memory" in data["supervisor_down"] and data["bad_events"] == 1
    assert data["damage"][0].startswith(f"{ws.journal_path}:5: ") and data["chain_break"].startswith(f"{ws.journal_path}:5")
    assert data["ledger_break"].startswith(f"{ws.ledger_path}:1")
    row = next(r for r in data["rows"] if r["stage"] == "gated")
    assert (row["executor"], row["slurm_id"], row["gpus"], row["executor_state"]) == ("slurm", "41", [0, 1], "PENDING (Resources)")


def test_status_evaluates_the_gates_once_for_all_approved_stages(tmp_path, monkeypatch):
    """Each approved gated stage's evidence reads the gates; one overview evaluates them once."""
    import engine.approvals as approvals
    from engine.overview import build_overview
    from engine.spec import load_spec
    from engine.state import PipelineState

    base = tmp_path / "base"
    base.mkdir()
    (base / "w.bin").write_bytes(b"weights")
    ship = {"kind": "command", "params": {"argv": ["true"]}, "approval": "required", "work_item": "W",
            "memory_gb": 0.1, "duration_h": 0.1}
    ws = Workspace(tmp_path / "ws").init()
    ws.spec_path.write_text(yaml.safe_dump({
        "name": "g", "models": {"base": {"path": str(base)}},
        "work_items": {"W": {"title": "w", "acceptance": ["AC"]}},
        "stages": {f"ship{i}": ship for i in range(3)},
        "acceptance": {"AC": {"checkpoint": "model:base", "expr": "humaneval.pass_at_1 >= 0.5"}}}))
    spec, state = load_spec(ws.spec_path), PipelineState(ws)
    for name in spec.stages:
        evidence = approvals.stage_evidence(spec, ws, name)
        state.approvals[name] = {"by": "me", "evidence": evidence, "override": "test",
                                 "seal": approvals.approval_seal(name, "me", evidence, "test")}
    calls = []
    real = approvals.evaluate_gates
    monkeypatch.setattr(approvals, "evaluate_gates", lambda *a, **k: calls.append(1) or real(*a, **k))
    rows = build_overview(ws, spec, state).rows
    assert [r.approval for r in rows] == ["approved"] * 3
    assert len(calls) == 1
