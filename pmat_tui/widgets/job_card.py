"""One job: progress bar, rate and ETA from its own timestamps, sparkline, resources, curves."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar

from engine.eta import Profile
from engine.overview import attempt_placement, estimate
from engine.state import Attempt, StageState
from pmat_tui.fmt import fmt_bytes, fmt_duration, fmt_num, fmt_rate
from pmat_tui.guard import Guarded
from pmat_tui.spark import eta_text, sparkline
from pmat_tui.widgets.stage_detail import CURVES

SPARK_CELLS = 56


class JobCard(Guarded, Vertical, can_focus=True):
    """A job's live numbers; rate and ETA come from event timestamps, never from the widget."""

    def __init__(self, job_id: str, **kw) -> None:
        super().__init__(classes="job-card", **kw)  # no DOM id: a job's old card may still be leaving
        self.job_id = job_id
        self.stage = job_id.rpartition(".")[0]
        self._shown: dict[str, object] = {}

    def compose(self) -> ComposeResult:
        yield Label(self.job_id, classes="job-title")
        with Horizontal(classes="job-progress"):
            yield ProgressBar(show_eta=False)
            yield Label("", classes="job-count")
        yield Label("", classes="job-stats")
        with Horizontal(classes="job-rate"):
            yield Label("rate/h ", classes="spark-label")
            yield Label("", classes="rate-spark spark")
        for _name, short in CURVES:
            with Horizontal(classes=f"job-curve curve-{short}"):
                yield Label("", classes="spark-label")
                yield Label("", classes=f"{short}-spark spark")

    def _set(self, selector: str, value: object) -> None:
        """Update a child only when its value changed: Label.update re-lays the card out."""
        if self._shown.get(selector) == value:
            return
        self._shown[selector] = value
        self.query_one(selector, Label).update(value)  # type: ignore[arg-type]

    def update_job(self, a: Attempt, st: StageState, now: float, profile: Profile | None = None) -> None:
        if not self.is_attached:  # replaced by a newer set of cards before this ran
            return
        status = a.outcome or ("running" if a.running else "queued")
        style = {"running": "bold green", "ok": "green", "failed": "bold red", "cancelled": "magenta", "crashed": "bold red"}.get(status, "")
        title = Text(f"{a.job_id} ", style="bold")
        title.append(status, style=style)
        if where := attempt_placement(a):  # slurm 41 PENDING (Resources): the scheduler's word
            title.append(f"  {where}", style="cyan")
        if st.cancel_requested and a.running:
            title.append("  cancelling…", style="magenta")
        if a.warnings:
            title.append(f"  ⚠ {a.warnings[-1][:60]}", style="yellow")
        self._set(".job-title", title)
        bar = self.query_one(ProgressBar)
        if a.total:
            bar.update(total=a.total, progress=a.done)
        count = f"{fmt_num(a.done)}/{fmt_num(a.total)} {a.unit}" if a.total else f"{fmt_num(a.done)} {a.unit}"
        self._set(".job-count", count)
        e = estimate(st, now, profile) if a is st.latest else None
        elapsed = ((a.finished_at or now) - a.started_at) if a.started_at else None
        gpu = fmt_bytes(a.gpu) if a.gpu is not None else "-"
        eta = (eta_text(e.eta_s, e.pm_s) or "after 2 steps") if e and a.running else "-"
        rate = e.rate if e and e.rate else None
        stats = (f"rate {fmt_rate(rate * 3600 if rate else None, a.unit)} · ETA {eta}"
                 f" · elapsed {fmt_duration(elapsed)} · RSS {fmt_bytes(a.rss or None)} · GPU {gpu}")
        self._set(".job-stats", stats)
        rates = [r * 3600 for r in st.rate_series(SPARK_CELLS)] if a is st.latest else []
        self.query_one(".job-rate", Horizontal).display = bool(rates)  # nothing drawn without data
        self._set(".rate-spark", sparkline(rates, SPARK_CELLS))
        for name, short in CURVES:
            series = [v for _, v in a.metric_series(name)[-400:] if isinstance(v, int | float)]
            box = self.query_one(f".curve-{short}", Horizontal)
            box.display = bool(series)
            if series:
                self._set(f".curve-{short} .spark-label", f"{short} {series[0]:.3g}→{series[-1]:.3g} ")
                self._set(f".{short}-spark", sparkline(series, SPARK_CELLS))
