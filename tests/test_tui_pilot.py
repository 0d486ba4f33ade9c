"""The console against a real supervisor and real stage subprocesses (Textual pilot)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from engine.events import read_events
from engine.spec import load_spec
from engine.supervisor import Supervisor
from engine.workspace import Workspace
from pmat_tui.app import PmatApp
from pmat_tui.screens.approve import ApproveScreen, user_name
from pmat_tui.screens.confirm import ConfirmScreen
from pmat_tui.widgets.dag_tree import DagTree
from pmat_tui.widgets.job_card import JobCard

COUNT = "import sys,time\nn=int(sys.argv[1])\nfor i in range(n+1):\n    print(f'PMAT_PROGRESS {i} {n} steps', flush=True)\n    time.sleep(float(sys.argv[2]))\n"


def _spec() -> dict:
    def cmd(n: int, pause: float, **kw) -> dict:
        return {"kind": "command", "params": {"argv": ["{python}", "-c", COUNT, str(n), str(pause)]},
                "memory_gb": 0.1, "duration_h": 0.01, **kw}

    return {
        "name": "tui-test",
        "work_items": {"W-1": {"title": "count", "acceptance": ["AC-1"]}},
        "stages": {
            "count": cmd(24, 0.25, work_item="W-1"),
            "gated": {"kind": "tiny_model", "work_item": "W-1", "after": ["count"], "approval": "required",
                      "params": {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64,
                                 "num_attention_heads": 2, "num_key_value_heads": 1},
                      "memory_gb": 0.1, "duration_h": 0.01},
            "long": cmd(400, 0.2),
        },
        "acceptance": {"AC-1": {"description": "the gated model exists", "checkpoint": "gated.model",
                                "expr": "ties.ok == 1", "work_item": "W-1"}},
    }


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws").init()
    ws.spec_path.write_text(yaml.safe_dump(_spec()))
    return ws


@pytest.fixture
def supervisor(ws: Workspace) -> Iterator[Supervisor]:
    """A real supervisor ticking in a background thread of the test process."""
    sup = Supervisor(ws, load_spec(ws.spec_path))
    sup.start()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            sup.tick()
            stop.wait(0.1)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield sup
    stop.set()
    t.join(5)
    for a in sup.state.running():  # leave no stray stage process behind
        if a.identity:
            from engine.procs import ProcIdentity

            ProcIdentity.from_dict(a.identity).signal_group(9)
    sup.release()


async def _until(pilot, cond: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await pilot.pause(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def screen_text(app: PmatApp) -> str:
    """What the terminal shows now, as plain text."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def _labels(app: PmatApp) -> dict[str, str]:
    tree = app.screen.query_one(DagTree)
    return {s: tree.labels[s].plain for s in tree.stage_nodes}


async def test_launch_watch_approve_cancel_reopen(ws: Workspace, supervisor: Supervisor) -> None:
    app = PmatApp(ws)
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: app.loaded, what="first fold")
        m = app.model
        tree = app.screen.query_one(DagTree)
        assert "ready (not requested" in _labels(app)["count"]
        tree.select_stage("count")
        await pilot.pause()
        assert app.selected_stage == "count"
        await pilot.press("r")
        await _until(pilot, lambda: m.rows["count"].status == "running" and (m.rows["count"].done or 0) >= 2,
                     what="count running with progress")
        first_done = m.rows["count"].done
        await pilot.press("2")  # jobs view: the card's numbers come from the job's events
        await _until(pilot, lambda: m.rows["count"].done > first_done, what="progress advancing")
        await _until(pilot, lambda: all(t in screen_text(app) for t in ("/24 steps", "rate", "ETA", "elapsed")),
                     what="the job card")
        assert app.screen.query_one(JobCard).job_id == "count.1"
        await pilot.press("1")
        tree = app.screen.query_one(DagTree)
        tree.select_stage("gated")
        await pilot.pause()
        assert "waiting on count" in _labels(app)["gated"]
        await pilot.press("a")
        await _until(pilot, lambda: isinstance(app.screen, ApproveScreen), what="approve modal")
        modal = app.screen
        assert modal.evidence == m.evidence("gated")
        text = screen_text(app)  # at 80x24 the failing criterion and what approving means come first
        assert "Approve stage gated" in text and "AC-1 NO DATA" in text and "OVERRIDE" in text
        await pilot.press("enter")  # no key approves over a criterion without data: a reason is typed
        await pilot.pause(0.3)
        assert isinstance(app.screen, ApproveScreen) and "gated" not in m.state.approvals
        await pilot.press(*"tiny test model", "enter")
        await _until(pilot, lambda: "gated" in m.state.approvals, what="approval journaled")
        grant = m.state.approvals["gated"]
        assert grant["by"] == user_name() and grant["ts"] > 0 and grant["override"] == "tiny test model"
        assert grant["evidence"] == m.evidence("gated")
        await pilot.press("4")  # the gates view names who approved the gated stage, and when
        await _until(pilot, lambda: f"gates stage gated: approved by {grant['by']} at" in screen_text(app),
                     what="approval in the gates view")
        await pilot.press("1")
        await pilot.press("r")
        await _until(pilot, lambda: m.rows["gated"].status == "done", timeout=90, what="gated stage done")
        assert m.rows["count"].status == "done"
        tree.select_stage("long")
        await pilot.press("r")
        await _until(pilot, lambda: m.rows["long"].status == "running" and (m.rows["long"].done or 0) >= 1,
                     what="long running")
        await pilot.press("c")
        await _until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm modal")
        await pilot.press("y")
        await _until(pilot, lambda: m.rows["long"].status == "cancelled", what="cancelled")
        await pilot.press("t")  # retry: a second attempt of the cancelled stage
        await _until(pilot, lambda: m.rows["long"].job_id == "long.2" and m.rows["long"].status == "running"
                     and m.state.jobs["long.2"].started_at is not None, what="retry running")
        await pilot.press("c", "y")
        await _until(pilot, lambda: m.rows["long"].status == "cancelled", what="retry cancelled")
        await pilot.pause(0.3)
        before = _labels(app)
        statuses = {s: r.status for s, r in m.rows.items()}
    for job in ("long.1", "long.2"):
        events = read_events(ws.job_log(job))
        assert events[-1]["kind"] == "job_finished" and events[-1]["outcome"] == "cancelled"

    again = PmatApp(ws)  # close and reopen: the same state, rebuilt from the logs
    async with again.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: again.loaded, what="first fold")
        await pilot.pause()
        assert {s: r.status for s, r in again.model.rows.items()} == statuses
        assert _labels(again) == before
        assert again.model.state.approvals["gated"]["by"] == grant["by"]


async def test_readonly_changes_nothing(ws: Workspace, supervisor: Supervisor) -> None:
    app = PmatApp(ws, readonly=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: app.loaded, what="first fold")
        app.screen.query_one(DagTree).select_stage("count")
        await pilot.pause()
        for key in ("r", "a", "c", "t", "y"):
            await pilot.press(key)
        await pilot.pause(0.5)
        assert isinstance(app.screen.query_one(DagTree), DagTree)  # no modal opened
        assert list(ws.commands_dir.iterdir()) == []
        assert not any(ev.get("kind") == "command_received" for ev in read_events(ws.journal_path))
        assert all(not app.check_action(a, ()) for a in ("run", "approve", "cancel", "retry"))
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert not any(t.startswith(("Run:", "Cancel:", "Retry:", "Approve:")) for t in titles)
        with pytest.raises(PermissionError):
            app.model.send("run", "count")
        footer = screen_text(app).splitlines()[-1]
        assert "Quit" in footer and "Run" not in footer and "Cancel" not in footer and "Approve" not in footer
    assert app.model.rows["count"].status == "pending"


def test_sighup_exits_cleanly_and_leaves_supervisor(ws: Workspace) -> None:
    """`pmat` (no arguments) opens the console and starts a detached supervisor; a hung-up
    terminal ends the console only."""
    import pty
    import signal
    import subprocess

    from engine.inbox import supervisor_identity

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "PMAT_WORKSPACE"}
    env.update(TERM="xterm-256color", COLUMNS="80", LINES="24")
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli.main"], cwd=ws.root,  # plain `pmat` opens the console
                            stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    try:
        seen = b""
        deadline = time.monotonic() + 30
        while b"DAG" not in seen and time.monotonic() < deadline:
            import select

            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                seen += os.read(master, 65536)
        assert b"DAG" in seen, seen[-500:]
        ident = None  # the detached supervisor takes its lock once its own imports are done
        deadline = time.monotonic() + 30
        while ident is None and time.monotonic() < deadline:
            ident = supervisor_identity(ws)
            time.sleep(0.1)
        assert ident is not None and ident.pid != proc.pid
        proc.send_signal(signal.SIGHUP)
        os.close(master)
        assert proc.wait(timeout=10) == 0
        assert ident.alive(), "closing the console must not stop the supervisor"
    finally:
        if proc.poll() is None:
            proc.kill()
        ident = supervisor_identity(ws)
        if ident is not None:
            ident.signal_group(signal.SIGTERM)


def _churn_spec() -> dict:
    """Six short stages in two chains: jobs start and finish every second or so."""
    def cmd(after: list[str]) -> dict:
        return {"kind": "command", "params": {"argv": ["{python}", "-c", COUNT, "3", "0.15"]},
                "memory_gb": 0.1, "duration_h": 0.001, "after": after}

    return {"name": "churn", "stages": {"a1": cmd([]), "b1": cmd([]), "a2": cmd(["a1"]), "b2": cmd(["b1"]),
                                         "a3": cmd(["a2"]), "b3": cmd(["b2"])}}


async def test_no_view_crashes_while_jobs_start_and_finish(tmp_path: Path) -> None:
    """Every view stays up while jobs come and go, also when two refreshes land before the
    widgets of the first have settled (the Jobs view once remounted cards under the same ids)."""
    ws = Workspace(tmp_path / "churn").init()
    ws.spec_path.write_text(yaml.safe_dump(_churn_spec()))
    sup = Supervisor(ws, load_spec(ws.spec_path))
    sup.start()
    stop = threading.Event()
    loop = threading.Thread(target=lambda: [sup.tick() or stop.wait(0.1) for _ in iter(stop.is_set, True)], daemon=True)
    loop.start()
    app = PmatApp(ws)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await _until(pilot, lambda: app.loaded, what="first fold")
            app.model.send("run", "all")
            views = "12345"
            i = 0
            while not all(r.status == "done" for r in app.model.rows.values()):
                await pilot.press(views[i % len(views)])
                for _ in range(3):
                    app.do_refresh(force=True)
                    app.do_refresh()
                    await pilot.pause(0.05)
                i += 1
                assert i < 400, "the stages did not finish"
            assert app.view_errors == []
            assert app.is_running
    finally:
        stop.set()
        loop.join(5)
        sup.release()


async def test_a_failing_view_is_a_notice_not_an_exit(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from pmat_tui.screens.gates import GatesScreen

    def broken(self, structural: bool) -> None:
        raise RuntimeError("gates fell over")

    monkeypatch.setattr(GatesScreen, "update_view", broken)
    monkeypatch.setenv("XDG_STATE_HOME", str(ws.root.parent / "state"))
    app = PmatApp(ws, watch=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await _until(pilot, lambda: app.loaded, what="first fold")
        await pilot.press("4")
        await pilot.pause(0.2)
        await pilot.press("1")
        await pilot.pause(0.2)
        assert app.is_running and app.view_errors
        print("a library printing while the console runs", flush=True)  # once ended it: App._flush clashed
        await pilot.pause(0.3)
        assert app.is_running

        def broken_move(self, delta: int) -> None:
            raise ValueError("cursor fell over")

        monkeypatch.setattr(DagTree, "action_move", broken_move)  # a widget's own handler fails
        await pilot.press("j", "j")
        await pilot.pause(0.2)
        assert app.is_running and sum("cursor fell over" in e for e in app.view_errors) == 1
        assert app.view_errors[0].startswith("Gates view: RuntimeError: gates fell over")
        assert "gates fell over" in (ws.root.parent / "state" / "pmat" / "console-errors.log").read_text()
        assert isinstance(app.screen.query_one(DagTree), DagTree)
