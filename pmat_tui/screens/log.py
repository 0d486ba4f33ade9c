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
        Binding("v", "people", "all events", show=False),
        Binding("o", "out", "stdout", show=False),
        Binding("escape", "back", "back", show=False),
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
        """The journal, a job's event log, or (``JOB:out``) the job's stdout/stderr file."""
        t = self.papp.log_target or "supervisor"
        job, _, out = t.partition(":")
        if job == "supervisor":
            return self.model.ws.logs_dir / "supervisor.out" if out else self.model.ws.journal_path
        log = self.model.ws.job_log(job)
        return log.with_suffix(".out") if out else log

    def update_view(self, structural: bool) -> None:
        super().update_view(structural)
        view = self.query_one(LogView)
        path = self.target_path()
        if view.path != path:
            if view.filter_text:  # a filter belongs to the log it was typed for
                self._close_filter()
            view.open(path)
        else:
            view.poll()
        self._title()

    def _close_filter(self) -> None:
        box = self.query_one("#log-filter", Input)
        box.value = ""
        box.display = False
        view = self.query_one(LogView)
        view.set_filter("")
        view.focus()

    def action_back(self) -> None:
        """Esc: close the filter if one is open or applied, else back to the previous view."""
        view = self.query_one(LogView)
        if self.query_one("#log-filter", Input).display or view.filter_text:
            self._close_filter()
            self._title()
        else:
            self.papp.action_back()

    def action_people(self) -> None:
        view = self.query_one(LogView)
        view.set_people(not view.people)
        self._title()

    def action_out(self) -> None:
        job = (self.papp.log_target or "supervisor").partition(":")[0]
        self.papp.log_target = job if self.papp.log_target.endswith(":out") else f"{job}:out"
        self.update_view(True)

    def _title(self) -> None:
        view = self.query_one(LogView)
        t = Text(f" {self.papp.log_target or '-'} ", style="bold reverse")
        t.append(f" {view.rows} lines", style="dim")
        if view.tail is not None and not view.tail.at_top:
            t.append(" (older lines load as you scroll up)", style="dim")
        t.append("  FOLLOW" if view.follow else "  PAUSED", style="bold green" if view.follow else "bold yellow")
        if not view.plain:
            t.append("  steps (v: all events)" if view.people else "  all events (v: steps)", style="dim")
        t.append("  o: events" if view.plain else "  o: stdout/stderr", style="dim")
        if view.path is not None and not view.path.exists():
            t.append("  (nothing written yet)", style="yellow")
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
            value = json.loads(event.raw)
            # a step's events: one per line, so that its metrics are in sight at 80x24
            text = ("\n".join(json.dumps(v, default=str) for v in value) if isinstance(value, list)
                    else json.dumps(value, indent=2, default=str))
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
