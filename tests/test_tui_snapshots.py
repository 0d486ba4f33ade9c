"""Snapshots of every view at 80x24 and 160x48 from fixed fixture logs and a frozen clock: the
header's summary, DAG rows with progress bars, the detail panes of a sampling and a training
stage, jobs, memory bars, gates, the log for people, and the dialogs.

Update after a deliberate change with ``pytest tests/test_tui_snapshots.py --snapshot-update``
and look at the SVGs under tests/__snapshots__/ before committing them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pmat_tui.app import PmatApp
from pmat_tui.fixture import FIXTURE_NOW, fixture_memory, write_fixture

SIZES = [(80, 24), (160, 48)]


@pytest.fixture
def fixture_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PmatApp:
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("USER", "tester")
    monkeypatch.setattr("pmat_tui.screens.approve.user_name", lambda: "tester")  # the approver's name
    time.tzset()
    ws = write_fixture(tmp_path / "fx")
    app = PmatApp(ws, now=lambda: FIXTURE_NOW, memory_probe=fixture_memory, watch=False)
    app.selected_stage = "sample"
    return app


def _before(*keys: str, log: str | None = None, stage: str | None = None):
    async def run_before(pilot) -> None:
        while not pilot.app.loaded:
            await pilot.pause(0.01)
        if log:
            pilot.app.log_target = log
        if stage:
            from pmat_tui.widgets.dag_tree import DagTree

            pilot.app.screen.query_one(DagTree).select_stage(stage)
        for key in keys:
            await pilot.press(key)
        await pilot.pause()
        pilot.app.clear_notifications()
        await pilot.pause()

    return run_before


VIEWS = {
    "dag": _before(),
    "dag-training": _before(stage="sft"),  # a running training stage: bar, ETA, curves first
    "jobs": _before("2"),
    "memory": _before("3"),
    "gates": _before("4", "down"),
    "log": _before("5", "p", log="sft.1"),
}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("view", list(VIEWS))
def test_view(snap_compare, fixture_app: PmatApp, view: str, size: tuple[int, int]) -> None:
    assert snap_compare(fixture_app, terminal_size=size, run_before=VIEWS[view])


def test_approve_modal(snap_compare, fixture_app: PmatApp) -> None:
    fixture_app.selected_stage = "release"
    assert snap_compare(fixture_app, terminal_size=(80, 24), run_before=_before("a"))


def test_help(snap_compare, fixture_app: PmatApp) -> None:
    assert snap_compare(fixture_app, terminal_size=(80, 24), run_before=_before("question_mark"))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dag_folds_done_items(snap_compare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size) -> None:
    """Forty stages in four work items, three running in the last: done items fold to one line."""
    from pmat_tui.fixture import write_bench

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    ws = write_bench(tmp_path / "bench", jobs=40, events=2000)
    app = PmatApp(ws, now=lambda: FIXTURE_NOW, memory_probe=fixture_memory, watch=False)
    assert snap_compare(app, terminal_size=size, run_before=_before())


def test_the_fixture_commits_results_as_a_real_job_does(tmp_path: Path) -> None:
    """The snapshots' gates come from records a launched job committed (chained ledger and
    journal, sealed job_finished): a real PASS and FAIL with evidence, nothing ignored."""
    from engine.chain import verify_chain
    from engine.gates import evaluate_gates
    from engine.overview import load_spec_fast

    ws = write_fixture(tmp_path / "fx")
    assert verify_chain(ws.journal_path).ok and verify_chain(ws.ledger_path).ok
    gates = evaluate_gates(load_spec_fast(ws.spec_path, check_params=False), ws)
    assert {n: (g.outcome, g.evidence, g.ignored) for n, g in gates.items() if g.evidence} == {
        "AC-021": ("pass", ["ledger:1"], []), "AC-002": ("fail", ["ledger:2"], [])}
