"""The console says at once what `pmat status` says: a supervisor that stopped (why, how to
restart it), damaged logs and broken hash chains, and where a job runs (Slurm id and state)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from engine.procs import ProcIdentity
from pmat_tui.app import PmatApp
from pmat_tui.fixture import FAKE_IDENT, FIXTURE_NOW, fixture_memory, write_fixture
from pmat_tui.model import SUPERVISOR_CHECK_S
from pmat_tui.widgets.dag_tree import DagTree


def _text(app: PmatApp) -> str:
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def _notices(app: PmatApp) -> list[str]:
    return [n.message for n in app._notifications]


async def _loaded(app: PmatApp, pilot) -> None:
    while not app.loaded:
        await pilot.pause(0.01)
    await pilot.pause()


async def test_a_supervisor_that_stops_is_said_at_once_with_why_and_how_to_restart(tmp_path: Path) -> None:
    ws = write_fixture(tmp_path / "fx")
    ws.lock_path.write_text(json.dumps(ProcIdentity.of(os.getpid()).as_dict()))  # "the supervisor" runs
    app = PmatApp(ws, now=lambda: FIXTURE_NOW, memory_probe=fixture_memory, watch=False)
    async with app.run_test(size=(160, 40)) as pilot:
        await _loaded(app, pilot)
        assert f"supervisor {os.getpid()}" in _text(app).splitlines()[0]
        assert not any("not running" in n for n in _notices(app)), _notices(app)
        (ws.logs_dir / "supervisor.out").write_text("tick\nsupervisor stopped: MemoryError in the round\n")
        ws.lock_path.write_text(json.dumps(FAKE_IDENT))  # it died
        time.sleep(SUPERVISOR_CHECK_S + 0.1)
        app.do_refresh()
        await pilot.pause()
        said = [n for n in _notices(app) if "is not running" in n]
        assert said and "MemoryError in the round" in said[0] and "pmat supervise --detach" in said[0], _notices(app)
        assert "supervisor down" in _text(app).splitlines()[0]


async def test_damaged_logs_and_a_slurm_job_are_shown(tmp_path: Path) -> None:
    ws = write_fixture(tmp_path / "fx")
    with open(ws.journal_path, "a") as fh:
        fh.write("{not json\n")
    lines = ws.journal_path.read_text().count("\n")
    app = PmatApp(ws, now=lambda: FIXTURE_NOW, memory_probe=fixture_memory, watch=False, readonly=True)
    async with app.run_test(size=(160, 40)) as pilot:
        await _loaded(app, pilot)
        assert "logs damaged (pmat status)" in _text(app).splitlines()[0]
        logs = [n for n in _notices(app) if "damaged log line" in n]
        assert logs and f"{ws.journal_path}:{lines}" in logs[0] and "journal chain broken" in logs[0], _notices(app)
        app.screen.query_one(DagTree).select_stage("sample")
        await pilot.pause()
        assert "on slurm 41 RUNNING on node3 gpus 0" in _text(app), _text(app)
        await pilot.press("2")
        await pilot.pause()
        assert "sample.1 running  slurm 41 RUNNING on node3 gpus 0" in _text(app), _text(app)
