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
        Binding("enter", "app.open_log", "log", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._cards: dict[str, JobCard] = {}  # job id -> its card; a card is never mounted twice

    def body(self) -> ComposeResult:
        with VerticalScroll(id="jobs-list"):
            yield Static("No job runs. Select a stage in the DAG view (1) and press r to run it.", id="jobs-empty")

    def update_view(self, structural: bool) -> None:
        super().update_view(structural)
        m = self.model
        jobs = m.running() + list(reversed(m.recent_finished(FINISHED_SHOWN)))
        self._place_cards([a.job_id for a in jobs])
        self.query_one("#jobs-empty").display = not jobs
        now = m.now()
        for a in jobs:
            card = self._cards[a.job_id]
            if card.is_mounted:
                card.update_job(a, m.state.stage(a.stage), now, m.profiles.get(a.stage))
            else:
                card.call_after_refresh(card.update_job, a, m.state.stage(a.stage), now, m.profiles.get(a.stage))
        if jobs and self.focused is None:
            first = self._cards[jobs[0].job_id]
            first.call_after_refresh(first.focus)

    def _place_cards(self, wanted: list[str]) -> None:
        """Cards keyed by job id, updated in place: a card leaves when its job drops out of
        the list and is created once when a job appears; the rest are only moved. Removal
        takes effect later, so nothing here depends on it having happened."""
        box = self.query_one("#jobs-list", VerticalScroll)
        for job_id in [j for j in self._cards if j not in wanted]:
            self._cards.pop(job_id).remove()
        new = [JobCard(j) for j in wanted if j not in self._cards]
        self._cards.update((c.job_id, c) for c in new)
        if new:
            box.mount_all(new)
        shown = [c.job_id for c in box.children if isinstance(c, JobCard) and c.job_id in self._cards]
        if shown != wanted:
            for before, after in zip(wanted, wanted[1:], strict=False):
                box.move_child(self._cards[after], after=self._cards[before])

    def on_descendant_focus(self, event) -> None:
        card = event.widget if isinstance(event.widget, JobCard) else None
        if card is not None:
            self.papp.selected_stage = card.stage
