"""Log view: a job's JSONL log, followed or paused, filtered, one event pretty-printed."""

from __future__ import annotations

import json

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Input, Static

from pmat_tui.screens.base import ViewScreen
from pmat_tui.widgets.log_view import LogView


class LogScreen(ViewScreen):
    VIEW = "Log"

    BINDINGS = [
        Binding("f", "toggle_follow", "follow"),
        Binding("slash", "filter", "filter"),
        Binding("p", "pretty", "pretty"),
        Binding("left_square_bracket", "cycle(-1)", "prev job", show=False),
        Binding("right_square_bracket", "cycle(1)", "next job", show=False),
        Binding("s", "journal", "journal", show=False),
    ]

    def body(self) -> ComposeResult:
        yield Static(id="log-title")
        yield Input(placeholder="filter (enter to apply, empty to clear)", id="log-filter")
        yield LogView(id="log-view")
        yield Static(id="log-pretty")

    def on_mount(self) -> None:
        self.query_one("#log-filter").display = False
        self.query_one("#log-pretty").display = False
        self.query_one(LogView).focus()

    def target_path(self):
        t = self.papp.log_target
        return self.model.ws.journal_path if t == "supervisor" else self.model.ws.job_log(t or "")

    def update_view(self, structural: bool) -> None:
        super().update_view(structural)
        view = self.query_one(LogView)
        path = self.target_path()
        if view.path != path:
            view.open(path)
        else:
            view.poll()
        self._title()

    def _title(self) -> None:
        view = self.query_one(LogView)
        t = Text(f" {self.papp.log_target or '-'} ", style="bold reverse")
        t.append(f" {view.rows} lines", style="dim")
        if view.tail is not None and not view.tail.at_top:
            t.append(" (older lines load as you scroll up)", style="dim")
        t.append("  FOLLOW" if view.follow else "  PAUSED", style="bold green" if view.follow else "bold yellow")
        if view.filter_text:
            t.append(f"  filter: {view.filter_text}", style="cyan")
        if view.tail is not None and view.tail.resets:
            t.append(f"  file replaced {view.tail.resets}x", style="yellow")
        self.query_one("#log-title", Static).update(t)

    def on_log_view_cursor_moved(self, event: LogView.CursorMoved) -> None:
        pretty = self.query_one("#log-pretty", Static)
        if not pretty.display:
            return
        if event.raw is None:
            pretty.update("")
            return
        try:
            text = json.dumps(json.loads(event.raw), indent=2, default=str)
        except ValueError:
            text = event.raw.decode(errors="replace")
        from rich.syntax import Syntax  # pygments loads only when pretty JSON is first shown

        pretty.update(Syntax(text, "json", word_wrap=True, theme="ansi_dark"))

    def action_toggle_follow(self) -> None:
        view = self.query_one(LogView)
        if view.follow:
            view.follow = False
        else:
            view.action_bottom()
        self._title()

    def action_filter(self) -> None:
        box = self.query_one("#log-filter", Input)
        box.display = True
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        view = self.query_one(LogView)
        view.set_filter(event.value)
        event.input.display = bool(event.value.strip())
        view.focus()
        self._title()

    def action_pretty(self) -> None:
        pretty = self.query_one("#log-pretty", Static)
        pretty.display = not pretty.display
        view = self.query_one(LogView)
        self.on_log_view_cursor_moved(LogView.CursorMoved(view.cursor_raw()))

    def action_cycle(self, step: int) -> None:
        jobs = sorted(self.model.state.jobs, key=lambda j: self.model.state.jobs[j].launched_at or 0)
        targets = ["supervisor", *jobs]
        cur = self.papp.log_target if self.papp.log_target in targets else "supervisor"
        self.papp.log_target = targets[(targets.index(cur) + step) % len(targets)]
        self.update_view(True)

    def action_journal(self) -> None:
        self.papp.log_target = "supervisor"
        self.update_view(True)
