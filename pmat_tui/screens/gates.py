"""Gates view: every acceptance criterion with its verdict and evidence; approve from here."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import DataTable

from pmat_tui.fmt import fmt_clock
from pmat_tui.model import GateRow
from pmat_tui.screens.base import ViewScreen
from pmat_tui.widgets.gates_table import GateDetail, GatesTable


class GatesScreen(ViewScreen):
    VIEW = "Gates"

    rows: list[GateRow] = []

    def body(self) -> ComposeResult:
        yield GatesTable(id="gates-table")
        yield GateDetail(id="gate-detail")

    def on_mount(self) -> None:
        self.query_one(GatesTable).focus()

    def update_view(self, structural: bool) -> None:
        super().update_view(structural)
        if structural:
            try:
                self.rows = self.model.gates()
            except OSError as exc:  # e.g. a checkpoint replaced while it was hashed: the next fold retries
                self.notify(f"gates: could not read {exc.filename}: {exc.strerror}", severity="error")
                return
            self.query_one(GatesTable).show(self.rows)
            self._show_selected()

    def _show_selected(self) -> None:
        table = self.query_one(GatesTable)
        g = self.rows[table.cursor_row] if self.rows and 0 <= table.cursor_row < len(self.rows) else None
        approvals = {}
        for stage in g.gated_stages if g else []:
            grant = self.model.state.approvals.get(stage)
            row = self.model.rows.get(stage)
            if grant:
                lapsed = f", REVOKED: {row.revoked}" if row and row.revoked else ""
                over = f" by OVERRIDE ({grant['override']})" if grant.get("override") else ""
                approvals[stage] = f"approved by {grant.get('by')} at {fmt_clock(grant.get('ts'))}{over}{lapsed}"
            elif row and row.revoked:
                approvals[stage] = f"REVOKED: {row.revoked}"
        self.query_one(GateDetail).show(g, approvals)
        if g and g.gated_stages:
            self.papp.selected_stage = g.gated_stages[0]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_selected()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter: the criterion's gated stage in the DAG view."""
        self._show_selected()
        self.papp.switch_mode("dag")  # the DAG view puts its cursor on the selected stage
