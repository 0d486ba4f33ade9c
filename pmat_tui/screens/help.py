"""`?`: every key of the console in one place."""

from __future__ import annotations

from rich.table import Table
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from pmat_tui.screens.log import LogScreen

# Keys the views and their widgets handle themselves (not app bindings): each list is shown
# after the row of the app key named. The log view's own bindings are read from its screen.
VIEW_KEYS: dict[str, list[tuple[str, str]]] = {
    "1": [
        ("j k / arrows", "move in every view (no mouse needed); tab moves between panels"),
        ("Enter", "open what is under the cursor: a stage's or job's log, a gate's stage, a work item's fold"),
    ],
    "escape": [("space", "DAG: fold or unfold a work item (done ones fold by themselves)")],
    "o": [("ctrl+p", "command palette: every action on every stage")],
}
SCREEN_KEYS_AFTER = {"o": [("Log view", LogScreen)]}  # a screen's bindings as one row, after the app key named


def screen_row(app: App, title: str, screen: type[Screen]) -> tuple[str, str]:
    """One row for a screen's own bindings (its way back, Esc, is the app's row)."""
    bindings = [b for b in Binding.make_bindings(screen.BINDINGS) if b.key != "escape"]
    return (f"{title}: " + " ".join(app.get_key_display(b) for b in bindings),
            ", ".join(b.tooltip or b.description for b in bindings))


def key_rows(app: App) -> list[tuple[str, str]]:
    """The app's bindings in order, one row per help text (a binding's tooltip, else its footer
    description) with every key that has it, each followed by its ``VIEW_KEYS``. Actions the
    app refuses (read-only) are left out: a binding added to the app is listed here by itself."""
    rows: dict[str, list[Binding]] = {}
    for binding in Binding.make_bindings(app.BINDINGS):
        if app.check_action(binding.action.partition("(")[0], ()) is not False:
            rows.setdefault(binding.tooltip or binding.description, []).append(binding)
    out = []
    for text, bindings in rows.items():
        out.append((" ".join(app.get_key_display(b) for b in bindings), text))
        for b in bindings:
            out.extend(VIEW_KEYS.get(b.key, []))
            out.extend(screen_row(app, title, screen) for title, screen in SCREEN_KEYS_AFTER.get(b.key, []))
    return out


LEGEND = ("▶ running  ✔ done  … queued  ○ not requested  ◆ needs approval  ▲ waiting for memory  "
          "✘ failed/crashed  ⊘ dependency failed  ■ cancelled  ★ critical path")


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "close")]

    def __init__(self, readonly: bool) -> None:
        super().__init__()
        self.readonly = readonly

    def compose(self) -> ComposeResult:
        t = Table("key", "does", box=None, padding=(0, 1), header_style="bold")
        for keys, does in key_rows(self.app):
            t.add_row(keys, does)
        with Vertical(classes="modal-box"):
            yield Static("pmat console — read-only: nothing can be changed" if self.readonly else "pmat console",
                         classes="modal-text")
            with VerticalScroll(classes="modal-scroll"):
                yield Static(t)
                yield Static(LEGEND, classes="modal-text")

    async def action_dismiss(self, result=None) -> None:
        self.dismiss(None)
