"""One line on top of every view: pipeline, workspace, supervisor, mode, critical path."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from pmat_tui.model import ConsoleModel


class HeaderBar(Static):
    """Where am I and is anything looking after my jobs."""

    _shown: Text | None = None

    def show(self, model: ConsoleModel, view: str) -> None:
        ov = model.overview
        t = Text()
        t.append(" pmat ", style="bold reverse")
        t.append(f" {view} ", style="bold")
        t.append(f"· {model.spec.name} · {model.ws.root.name} ")
        pid = ov.supervisor_pid if ov else None
        if pid:
            t.append(f"· supervisor {pid} ", style="green")
        else:
            t.append("· no supervisor ", style="bold red")
        if model.readonly:
            t.append(" READ-ONLY ", style="bold black on yellow")
        if ov:
            t.append(f" · critical path {ov.remaining_hours:.1f}h to go", style="dim")
        self._set(t)

    def loading(self, pipeline: str, logs: int, size: int) -> None:
        """Shown while the first fold reads the logs."""
        t = Text()
        t.append(" pmat ", style="bold reverse")
        t.append(f" {pipeline} · reading {logs} job logs ({size / 2**20:.0f} MB)…", style="bold")
        self._set(t)

    def _set(self, text: Text) -> None:
        """Show ``text`` unless it is already shown; one line whatever it says (height 1 in the CSS),
        so no layout pass: that would lay out and repaint the whole screen."""
        if text != self._shown:
            self._shown = text
            self.update(text, layout=False)
