"""Acceptance criteria: verdict, value against threshold, and the evidence behind it."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable, Static

from pmat_tui.fmt import fmt_num
from pmat_tui.guard import Guarded
from pmat_tui.model import GATE_STYLE, GateRow


class GatesTable(Guarded, DataTable):
    """One row per criterion; the row key is the AC id. j/k move like everywhere else."""

    BINDINGS = [Binding("j", "cursor_down", "down", show=False), Binding("k", "cursor_up", "up", show=False)]

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.add_columns("AC", "verdict", "value", "threshold", "checkpoint", "gates")

    def show(self, rows: list[GateRow]) -> None:
        keep = self.cursor_row
        self.clear()
        for g in rows:
            sym, style = GATE_STYLE.get(g.status, ("?", ""))
            self.add_row(g.ac, Text(f"{sym} {g.status}", style=style), fmt_num(g.value), fmt_num(g.threshold),
                         g.checkpoint or "-", ", ".join(g.gated_stages) or "-", key=g.ac)
        if rows:
            self.move_cursor(row=min(keep, len(rows) - 1))


class GateDetail(Static):
    """The selected criterion's description, expression and evidence record."""

    def show(self, g: GateRow | None, approvals: dict[str, str] | None = None) -> None:
        """``approvals``: gated stage -> who approved it and when (or that it is not approved)."""
        if g is None:
            self.update("")
            return
        sym, style = GATE_STYLE.get(g.status, ("?", ""))
        parts: list[RenderableType] = [
            Text(f"{sym} {g.ac} {g.status}", style=f"bold {style}"),
            Text(g.description or "-"),
            Text(f"rule: {g.detail}", style="dim"),
        ]
        ev = g.evidence or {}
        hashes = ", ".join(f"{k} {v or 'not built yet'}" for k, v in ev.get("checkpoints", {}).items())
        parts.append(Text(f"checkpoint hash: {hashes or '-'}"))
        for r in ev.get("records", []):
            metrics = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (r.get("metrics") or {}).items())
            parts.append(Text(f"evidence {r['id']}: {r['benchmark']} of model {r['model_hash']} {metrics} ({r['age']} ago)"))
        if not ev.get("records"):
            parts.append(Text("evidence: no result recorded for this checkpoint's current hash", style="dim"))
        for why in ev.get("ignored", []):  # "ledger:7 (humaneval): ignored: 8 of 164 tasks"
            parts.append(Text(f"ignored {why.replace(': ignored: ', ': ', 1)}", style="yellow"))
        if ev.get("missing"):
            parts.append(Text(f"missing: {', '.join(ev['missing'])}", style="yellow"))
        for stage in g.gated_stages:
            parts.append(Text(f"gates stage {stage}: {(approvals or {}).get(stage, 'not approved')} (a: review and approve)",
                              style="cyan"))
        self.update(Group(*parts))
