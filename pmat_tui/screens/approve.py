"""Approving a gated stage: show exactly the evidence that the approval will name."""

from __future__ import annotations

import os

from rich.console import Group
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Static

from pmat_tui.model import GATE_STYLE, GateRow
from pmat_tui.screens.confirm import ConfirmScreen


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


class ApproveScreen(ConfirmScreen):
    """Dismisses True to approve; the caller sends the same ``evidence`` it passed in."""

    BINDINGS = [Binding("y", "answer(True)", "approve"), Binding("n,escape", "answer(False)", "back")]

    def __init__(self, stage: str, evidence: dict, gates: list[GateRow]) -> None:
        super().__init__(f"Approve stage {stage}?")
        self.stage = stage
        self.evidence = evidence
        self.gates = gates

    def compose(self) -> ComposeResult:
        parts = [Text(self.question, style="bold"),
                 Text("The approval names this evidence; if it changes, the approval lapses.", style="dim"),
                 *evidence_lines(self.evidence)]
        for g in self.gates:
            sym, style = GATE_STYLE.get(g.status, ("?", ""))
            parts.append(Text(f"{sym} {g.ac}: {g.detail}", style=style))
        who = os.environ.get("USER") or str(os.getuid())
        parts.append(Text(f"Journaled by the supervisor as approved by {who}, with the time.", style="dim"))
        with Vertical(classes="modal-box"):
            with VerticalScroll(classes="modal-scroll"):
                yield Static(Group(*parts), id="approve-evidence")
            with Horizontal(classes="modal-buttons"):
                yield Button("Approve (y)", id="yes", variant="success")
                yield Button("Back (n)", id="no", variant="primary")
