"""Approving a gated stage: show exactly the evidence that the approval will name."""

from __future__ import annotations

import json
import os

from rich.console import Group
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from pmat_tui.model import GATE_STYLE, GateRow


class ApproveScreen(ModalScreen[bool]):
    """Dismisses True to approve; the caller sends the same ``evidence`` it passed in."""

    BINDINGS = [Binding("y", "answer(True)", "approve"), Binding("n,escape", "answer(False)", "back")]

    def __init__(self, stage: str, evidence: dict, gates: list[GateRow]) -> None:
        super().__init__()
        self.stage = stage
        self.evidence = evidence
        self.gates = gates

    def compose(self) -> ComposeResult:
        parts = [Text(f"Approve stage {self.stage}?", style="bold"),
                 Text("The approval names this evidence; if it changes, the approval lapses.", style="dim"),
                 Text(json.dumps(self.evidence, indent=1, default=str))]
        for g in self.gates:
            sym, style = GATE_STYLE.get(g.status, ("?", ""))
            parts.append(Text(f"{sym} {g.ac} {g.status}: value {g.value if g.value is not None else '-'}"
                              f" vs threshold {g.threshold if g.threshold is not None else '-'}", style=style))
        who = os.environ.get("USER") or str(os.getuid())
        parts.append(Text(f"Journaled by the supervisor as approved by {who}, with the time.", style="dim"))
        with Vertical(classes="modal-box"):
            with VerticalScroll(classes="modal-scroll"):
                yield Static(Group(*parts), id="approve-evidence")
            with Horizontal(classes="modal-buttons"):
                yield Button("Approve (y)", id="yes", variant="success")
                yield Button("Back (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
