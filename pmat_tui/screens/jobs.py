"""Jobs view: a card for every running job, then the last finished ones."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from pmat_tui.screens.base import ViewScreen
from pmat_tui.widgets.job_card import JobCard

FINISHED_SHOWN = 3


class JobsScreen(ViewScreen):
    VIEW = "Jobs"
    BINDINGS = [
        Binding("down,j", "focus_next", "next job", show=False),
        Binding("up,k", "focus_previous", "previous job", show=False),
    ]

    def body(self) -> ComposeResult:
        with VerticalScroll(id="jobs-list"):
            yield Static("No job runs. Select a stage in the DAG view (1) and press r to run it.", id="jobs-empty")

    def update_view(self, structural: bool) -> None:
        super().update_view(structural)
        m = self.model
        jobs = m.running() + [a for a in reversed(m.recent_finished(FINISHED_SHOWN))]
        box = self.query_one("#jobs-list", VerticalScroll)
        cards = {c.job_id: c for c in box.query(JobCard)}
        wanted = [a.job_id for a in jobs]
        if list(cards) != wanted:  # the set of jobs changed: rebuild the cards in order
            for card in cards.values():
                card.remove()
            cards = {a.job_id: JobCard(a.job_id) for a in jobs}
            box.mount_all(cards.values())
        self.query_one("#jobs-empty").display = not jobs
        now = m.now()
        for a in jobs:
            card = cards[a.job_id]
            if card.is_mounted:
                card.update_job(a, m.state.stage(a.stage), now)
            else:
                card.call_after_refresh(card.update_job, a, m.state.stage(a.stage), now)
        if jobs and not any(c.has_focus for c in cards.values()) and self.focused is None:
            first = cards[jobs[0].job_id]
            first.call_after_refresh(first.focus)

    def on_descendant_focus(self, event) -> None:
        card = event.widget if isinstance(event.widget, JobCard) else None
        if card is not None:
            self.papp.selected_stage = card.stage
