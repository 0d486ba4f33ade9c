"""DAG view: work items and stages on the left, the selected stage's details on the right."""

from __future__ import annotations

import time

from textual.app import ComposeResult

from pmat_tui.screens.base import ViewScreen
from pmat_tui.widgets.dag_tree import DagTree
from pmat_tui.widgets.stage_detail import StageDetail

DETAIL_EVERY_S = 3.0  # a running stage's details (bar, curves, log tail) redraw at most this often


class DagScreen(ViewScreen):
    VIEW = "DAG"

    _placed = False  # the cursor was put on the selected stage once; then it is the user's

    def body(self) -> ComposeResult:
        self._tree = DagTree(self.model, id="dag-tree")  # kept: update_view runs at every tick
        self._detail = StageDetail(self.model, id="stage-detail")
        yield self._tree
        yield self._detail

    def on_mount(self) -> None:
        self.query_one(DagTree).focus()
        self._ensure_selection()

    def _ensure_selection(self) -> None:
        """Start on the chosen stage, else the first running one, else the first stage."""
        tree = self.query_one(DagTree)
        rows = self.model.rows
        if not rows and not self.papp.selected_stage:
            return
        first = next((s for s, r in rows.items() if r.status == "running"), next(iter(tree.stage_nodes), None))
        self.papp.selected_stage = self.papp.selected_stage or first
        if self.papp.selected_stage:
            tree.select_stage(self.papp.selected_stage)
            self._placed = True

    def on_screen_resume(self) -> None:
        """Back from another view: the stage selected there (a gate's, a job's) is the cursor's."""
        super().on_screen_resume()
        stage = self.papp.selected_stage
        if stage and self._tree.cursor_key != stage:
            self._tree.select_stage(stage)

    def update_view(self, structural: bool) -> None:
        super().update_view(structural)
        if structural and not self._placed:
            self._ensure_selection()
        running = [a.stage for a in self.model.watched if a.running]
        self._tree.update_rows(None if structural else running)
        detail = self._detail
        row = self.model.rows.get(detail.stage or "")
        live = row is not None and row.status == "running" and time.monotonic() - detail.shown_at > DETAIL_EVERY_S
        if structural or live:
            detail.show(self.papp.selected_stage)

    def on_dag_tree_opened(self, event: DagTree.Opened) -> None:
        self.papp.action_open_log(event.stage)

    def on_dag_tree_highlighted(self, event: DagTree.Highlighted) -> None:
        if event.stage:
            self.papp.selected_stage = event.stage
            self.query_one(StageDetail).show(event.stage)
