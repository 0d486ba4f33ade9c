"""Memory view: available memory, pressure, per-job use and reservations, the queue."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll

from pmat_tui.screens.base import ViewScreen
from pmat_tui.widgets.memory_panel import MemoryPanel

PROBE_EVERY_S = 2.0


class MemoryScreen(ViewScreen):
    VIEW = "Memory"
    BINDINGS = [Binding("j", "scroll('down')", show=False), Binding("k", "scroll('up')", show=False)]

    def action_scroll(self, direction: str) -> None:
        scroll = self.query_one("#memory-scroll", VerticalScroll)
        scroll.scroll_down() if direction == "down" else scroll.scroll_up()

    def body(self) -> ComposeResult:
        with VerticalScroll(id="memory-scroll"):
            yield MemoryPanel(id="memory")

    def on_mount(self) -> None:
        self.query_one("#memory-scroll").focus()  # arrows scroll without a mouse
        self.set_interval(PROBE_EVERY_S, lambda: self.safe_update(False))

    def update_view(self, structural: bool) -> None:
        super().update_view(structural)
        if self.is_current:
            self.query_one(MemoryPanel).show(self.model)
