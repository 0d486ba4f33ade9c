"""The console names a revoked approval and the records a gate did not count, with the reasons."""

from __future__ import annotations

from pathlib import Path

from test_gates import revoked_with_a_partial_run

from pmat_tui.app import PmatApp
from pmat_tui.widgets.dag_tree import DagTree


def _text(app: PmatApp) -> str:
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def test_revoked_stage_and_ignored_records_are_shown(tmp_path: Path) -> None:
    ws = revoked_with_a_partial_run(tmp_path)
    app = PmatApp(ws, watch=False, readonly=True)
    async with app.run_test(size=(120, 40)) as pilot:
        while not app.loaded:
            await pilot.pause(0.01)
        app.screen.query_one(DagTree).select_stage("submit")
        await pilot.pause()
        dag = _text(app)
        assert "◇ ★ submit revoked: approval of submit lapsed (inputs.mo" in dag, dag
        assert "REVOKED: approval of submit lapsed (inputs.model," in dag and "approval revoked" in dag, dag
        await pilot.press("4")
        await pilot.pause()
        gates = _text(app)
        assert "gates stage submit: approved by alice at" in gates and "REVOKED: approval of submit" in gates, gates
        assert "ignored ledger:3 (humaneval): 8 of 164 tasks" in gates, gates
