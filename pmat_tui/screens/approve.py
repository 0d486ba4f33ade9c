"""Approving a gated stage: what fails first, what approving means, then the evidence.

A criterion that does not pass (FAIL, NO DATA, STALE) can only be approved over, with a
typed reason: the approval is then journaled as an override with that reason (see
``engine.approvals.check_approvable``) and shown as such wherever it is reported.
"""

from __future__ import annotations

import os
import pwd

from rich.console import Group
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

from pmat_tui.model import GATE_STYLE, GateRow


def user_name() -> str:
    """Who the supervisor will journal as the approver (the command file's owner)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER") or str(os.getuid())


def evidence_lines(evidence: dict) -> list[Text]:
    """The evidence dict as lines a person reads: input hashes, then each gate's verdict and records."""
    out = [Text("inputs:", style="bold")]
    for name, h in (evidence.get("inputs") or {}).items():
        out.append(Text(f"  {name}  {h or 'missing'}"))
    if not evidence.get("inputs"):
        out.append(Text("  (none)", style="dim"))
    for ac, g in (evidence.get("gates") or {}).items():
        hashes = ", ".join(f"{k or 'checkpoint'} {str(v)[:16] if v else 'not built'}" for k, v in (g.get("checkpoints") or {}).items())
        records = ", ".join(g.get("records") or []) or "no records"
        sym, style = GATE_STYLE.get(str(g.get("outcome")).replace("_", " "), ("?", ""))
        line = Text(f"  {sym} {ac} {g.get('outcome')}", style=style)
        line.append(f"  {hashes}  {records}", style="")
        out.append(line)
    return out


class ApproveScreen(ModalScreen[str | None]):
    """Dismisses None to go back, "" to approve, or the override reason to approve over failing gates.
    The caller sends the same ``evidence`` it passed in."""

    BINDINGS = [Binding("escape", "back", "back")]

    def __init__(self, stage: str, evidence: dict, gates: list[GateRow]) -> None:
        super().__init__()
        self.stage = stage
        self.evidence = evidence
        self.gates = gates
        self.failing = [g for g in gates if g.status != "pass"]

    def compose(self) -> ComposeResult:
        """The title, one line per failing criterion and what approving means stay in sight; the
        full verdicts and the evidence scroll; the reason and the buttons stay at the bottom."""
        head = [Text(f"Approve stage {self.stage}?", style="bold")]
        details: list[Text] = []
        for g in self.failing:
            sym, style = GATE_STYLE.get(g.status, ("?", ""))
            value = f" ({g.value} vs {g.threshold})" if g.value and g.threshold else ""
            head.append(Text(f"{sym} {g.ac} {g.status.upper()}{value}", style=f"bold {style}", no_wrap=True,
                             overflow="ellipsis"))
            detail = g.detail.removeprefix(f"{g.status}: ").removeprefix(f"{g.status.replace(' ', '_')}: ")
            details.append(Text(f"{sym} {g.ac} {g.status.upper()}: {detail}", style=style))
        if self.failing:
            head.append(Text(f"Approving anyway is an OVERRIDE: type why. It is journaled as approved by {user_name()} "
                             "with your reason, and shown in status, the model card and the bundle.", style="yellow"))
        else:
            head.append(Text(f"Every criterion passes. Journaled as approved by {user_name()}.", style="green"))
        head.append(Text(f"{self.stage} then runs on exactly the evidence below; if it changes, the approval lapses.",
                         style="dim"))
        details += [Text(f"{GATE_STYLE['pass'][0]} {g.ac}: {g.detail}", style=GATE_STYLE["pass"][1])
                    for g in self.gates if g.status == "pass"]
        with Vertical(classes="modal-box", id="approve-box"):
            yield Static(Group(*head), id="approve-head")
            with VerticalScroll(classes="modal-scroll", id="approve-scroll"):
                yield Static(Group(*details, *evidence_lines(self.evidence)), id="approve-evidence")
            if self.failing:
                yield Input(placeholder="reason for the override (required)", id="override-reason")
            with Horizontal(classes="modal-buttons"):
                label = "Override and approve" if self.failing else "Approve"
                yield Button(label, id="yes", variant="warning" if self.failing else "success",
                             disabled=bool(self.failing))
                yield Button("Back (Esc)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#override-reason" if self.failing else "#no").focus()

    def _reason(self) -> str:
        return self.query_one("#override-reason", Input).value.strip() if self.failing else ""

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#yes", Button).disabled = not event.value.strip()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self._reason():
            self.dismiss(self._reason())
        else:
            self.notify("type why you approve over a criterion that does not pass", severity="warning")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "yes" and (self._reason() or not self.failing):
            self.dismiss(self._reason())
        else:
            self.dismiss(None)

    def action_back(self) -> None:
        self.dismiss(None)
