"""One line on top of every view: what runs, what waits on a person, how long is left, and
whether anything looks after the jobs; names of the pipeline and workspace if room is left."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from engine.overview import summary
from pmat_tui.model import ConsoleModel


class HeaderBar(Static):
    """Where am I and is anything looking after my jobs."""

    _shown: Text | None = None

    def show(self, model: ConsoleModel, view: str) -> None:
        """Pieces by importance; the least important are left out until the line fits."""
        ov = model.overview
        width = self.size.width or self.app.size.width
        head = Text()
        head.append(" pmat ", style="bold reverse")
        head.append(f" {view}", style="bold")
        pieces: list[tuple[str, str, int]] = []  # text, style, rank (lower is kept longer)
        if model.readonly:
            pieces.append(("READ-ONLY", "bold black on yellow", 0))
        if ov:
            pieces += [(text, style, 1 if text.endswith(" done") and "/" in text else 0) for text, style in summary(ov)]
            pid = ov.supervisor_pid
            pieces.append((f"supervisor {pid}" if pid else "supervisor down" if ov.supervisor_down else "no supervisor",
                           "green" if pid else "bold red", 1 if pid else 0))
            if ov.log_warning():
                pieces.append(("logs damaged (pmat status)", "bold red", 0))
        pieces += [(model.spec.name, "", 2), (model.ws.root.name, "dim", 3)]
        for rank in (3, 2, 1):
            if len(head) + sum(len(p[0]) + 3 for p in pieces) <= width:
                break
            pieces = [p for p in pieces if p[2] < rank]
        for text, style, _ in pieces:
            head.append(" · ", style="dim")
            head.append(text, style=style)
        self._set(head)

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
