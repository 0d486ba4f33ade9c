"""`?`: every key of the console in one place."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = [
    ("1 2 3 4 5", "views: DAG, Jobs, Memory, Gates, Log"),
    ("j k / arrows", "move in every view (no mouse needed); tab moves between panels"),
    ("Enter", "open what is under the cursor: a stage's or job's log, a gate's stage, a work item's fold"),
    ("Esc", "back: closes a dialog or the log filter, else returns to the view before"),
    ("space", "DAG: fold or unfold a work item (done ones fold by themselves)"),
    ("r", "run the selected stage (with its upstream)"),
    ("a", "approve the selected gated stage (failing criteria need a typed override reason)"),
    ("c", "cancel the selected stage's job (asks first)"),
    ("t", "retry a failed, crashed or cancelled stage"),
    ("l / o", "the selected stage's log / its job's stdout and stderr (tracebacks)"),
    ("ctrl+p", "command palette: every action on every stage"),
    ("Log view: f / p [ ] s v", "follow/pause, filter, pretty JSON, prev/next job, journal, every event"),
    ("q", "quit (jobs keep running; the supervisor keeps working)"),
]


LEGEND = ("▶ running  ✔ done  … queued  ○ not requested  ◆ needs approval  ▲ waiting for memory  "
          "✘ failed/crashed  ⊘ dependency failed  ■ cancelled  ★ critical path")


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "close")]

    def __init__(self, readonly: bool) -> None:
        super().__init__()
        self.readonly = readonly

    def compose(self) -> ComposeResult:
        t = Table("key", "does", box=None, padding=(0, 1), header_style="bold")
        for k, v in KEYS:
            if self.readonly and k in ("r", "a", "c", "t"):
                continue
            t.add_row(k, v)
        with Vertical(classes="modal-box"):
            yield Static("pmat console — read-only: nothing can be changed" if self.readonly else "pmat console",
                         classes="modal-text")
            with VerticalScroll(classes="modal-scroll"):
                yield Static(t)
                yield Static(LEGEND, classes="modal-text")

    async def action_dismiss(self, result=None) -> None:
        self.dismiss(None)
