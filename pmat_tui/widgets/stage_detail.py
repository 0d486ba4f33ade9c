"""What one stage is: parameters, attempts, artifacts and the last lines of its log."""

from __future__ import annotations

import json
import os
import time

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from engine.overview import StageRow, attempt_placement
from engine.state import Attempt
from pmat_tui.fmt import (
    KIND_STYLE,
    fmt_bytes,
    fmt_clock,
    fmt_duration,
    fmt_rate,
    parse_event,
    short_hash,
)
from pmat_tui.guard import Guarded
from pmat_tui.logfmt import human_lines
from pmat_tui.logtail import LogTail
from pmat_tui.model import ConsoleModel, status_mark
from pmat_tui.spark import bar, eta_text, sparkline

LOG_LINES = 8
CURVES = (("loss", "loss"), ("rewards/chosen", "reward"), ("rewards/margins", "margin"))
CURVE_POINTS = 400  # the newest points a curve is drawn from


def curves(a: Attempt | None, width: int) -> list[Text]:
    """One line per training curve the job logged: ``loss 0.693→0.051 ▇▆▅▄▃▂▁``; none without data."""
    out = []
    for name, short in CURVES:
        series = [v for _, v in a.metric_series(name)[-CURVE_POINTS:] if isinstance(v, int | float)] if a else []
        if not series:
            continue
        label = f"{short:<7}{series[0]:>8.4g}→{series[-1]:<8.4g} "
        line = Text(label, style="dim")
        line.append(sparkline(series, max(8, width - len(label))), style="cyan")
        line.no_wrap = True
        out.append(line)
    return out


def progress_lines(row: StageRow, width: int) -> list[Text]:
    """A running stage's bar, then rate, ETA with its uncertainty, elapsed and memory."""
    out = []
    if row.total:
        frac = (row.done or 0) / row.total
        filled, empty = bar(frac, max(10, min(40, width - 30)))
        line = Text(filled, style="green")
        line.append(empty, style="grey35")
        line.append(f" {100 * frac:.0f}% {row.done:g}/{row.total:g} {row.unit}", style="bold")
        out.append(line)
    eta = eta_text(row.eta_s, row.eta_pm_s) or "after the second step"
    out.append(Text(f"rate {fmt_rate(row.rate_per_h, row.unit)} · ETA {eta} · elapsed {fmt_duration(row.elapsed_s)}"
                    f" · RSS {fmt_bytes(row.rss or None)}"))
    return out


def _table(*cols: str) -> Table:
    t = Table(*cols, box=None, padding=(0, 1), show_edge=False, header_style="bold dim", expand=False)
    return t


class StageDetail(Guarded, VerticalScroll):
    """Details of the stage selected in the DAG."""

    def __init__(self, model: ConsoleModel, **kw) -> None:
        super().__init__(**kw)
        self.model = model
        self.stage: str | None = None
        self.shown_at = 0.0
        self._shown_key: tuple = ()
        self._head_key: tuple = ((), 0, 0)
        self._shape: tuple = ()
        self.head = Static(id="stage-detail-head")  # what the stage is: redrawn when its status changes
        self.body = Static(id="stage-detail-body")  # attempts, artifacts, log tail: redrawn as the job runs

    def compose(self):
        yield self.head
        yield self.body

    def _key(self, stage: str | None) -> tuple:
        """What the rendering depends on; running attempts show elapsed in whole minutes."""
        st = self.model.state.stages.get(stage or "")
        a = st.latest if st else None
        row = self.model.rows.get(stage or "")
        return (stage, row and (row.status, row.reason, row.approval, row.revoked), len(st.attempts) if st else 0,
                a and (a.outcome, a.last_event_at, a.executor_state, int((self.model.now() - (a.started_at or 0)) // 60)),
                str(self.model.state.approvals.get(stage or "")))

    def show(self, stage: str | None, force: bool = False) -> None:
        self.shown_at = time.monotonic()
        key = self._key(stage)
        if key == self._shown_key and not force:
            return
        self._shown_key = key
        same_stage = stage == self.stage
        self.stage = stage
        if stage not in self.model.spec.stages:
            self.head.update(Text("Select a stage.", style="dim"))
            self.body.update("")
            self._head_key, self._shape = ((), 0, 0), ()
            return
        head, body = self.render_stage()
        head_key = (key, len(head.renderables), self.size.width)
        if head_key != self._head_key:  # a running stage's bar and curves: same lines, no layout
            self.head.update(head, layout=head_key[1:] != self._head_key[1:] or not same_stage)
            self._head_key = head_key
        # Re-layout (costly: the whole screen) only when the panel may have changed height.
        shape = (stage, self.size.width, tuple(len(p.rows) if isinstance(p, Table) else
                                               1 if getattr(p, "no_wrap", False) else len(str(p)) // 40
                                               for p in body.renderables))
        self.body.update(body, layout=not same_stage or shape != self._shape)
        self._shape = shape

    def render_stage(self) -> tuple[Group, Group]:
        m, stage = self.model, self.stage
        assert stage is not None
        entry = m.spec.stages[stage]
        row = m.rows.get(stage)
        parts: list[RenderableType] = []
        head = Text()
        if row:
            sym, style = status_mark(row)
            head.append(f"{sym} {stage}", style=f"bold {style}")
            head.append(f"  {row.status}", style=style)
            if row.critical:
                head.append("  ★ critical path", style="#ff8700")
        parts.append(head)
        st = m.state.stages.get(stage)
        width = max(20, (self.size.width or 80) - 2)
        if row and row.status == "running":
            parts += progress_lines(row, width)
            if where := row.where():  # "slurm 41 PENDING (Resources)": why a launched job shows no progress
                parts.append(Text(f"on {where}", style="cyan"))
        parts += curves(st.latest if st else None, width)
        if row and row.status not in ("running", "done"):
            parts.append(Text(f"why: {row.reason}", style="yellow"))
        grant = m.state.approvals.get(stage)
        if entry.approval == "required" and grant:
            over = f" by OVERRIDE ({grant['override']})" if grant.get("override") else ""
            parts.append(Text(f"approved by {grant.get('by')} at {fmt_clock(grant.get('ts'))}{over}",
                              style="yellow" if row and row.revoked else "cyan"))
        if row and row.revoked:
            parts.append(Text(f"REVOKED: {row.revoked}", style="bold magenta"))
        deps = m.spec.deps(stage)
        parts.append(Text(f"kind {entry.kind} · item {entry.work_item or '-'} · after {', '.join(deps) or '-'}"
                          f" · {entry.memory_gb:g} GB est · {fmt_duration(entry.duration_h * 3600)} est"
                          + (f" · approval {row.approval if row else 'required'}" if entry.approval == "required" else "")))
        params = _table("param", "value")
        for k, v in sorted(entry.params.items()):
            params.add_row(k, json.dumps(v, default=str) if not isinstance(v, str) else v)
        for k, v in sorted(entry.inputs.items()):
            params.add_row(f"input {k}", v)
        running = row is not None and row.status == "running"
        if not running:  # a running stage shows its numbers first; its parameters go below
            parts += [Text("Parameters", style="bold underline"), params]
        head, parts = Group(*parts), []
        if st and st.attempts:
            where = [attempt_placement(a) for a in st.attempts]
            att = _table("job", "outcome", "started", "elapsed", "peak RSS", *(["on"] if any(where) else []), "error")
            for a, on in zip(st.attempts, where, strict=True):
                end = a.finished_at or (m.now() if a.started_at else None)
                elapsed = end - a.started_at if end and a.started_at else None
                if elapsed and a.running:
                    elapsed -= elapsed % 60  # minutes: the panel need not redraw every second
                att.add_row(a.job_id, a.outcome or ("running" if a.running else "queued"), fmt_clock(a.started_at),
                            fmt_duration(elapsed), fmt_bytes(a.peak_rss or None), *([on] if any(where) else []),
                            (a.error or "")[:60])
            parts += [Text("Attempts", style="bold underline"), att]
            arts = {n: v for a in st.attempts for n, v in a.artifacts.items()}
            if arts:
                at = _table("artifact", "sha256", "size", "path")
                for n, v in sorted(arts.items()):
                    path = v.get("path") or ""
                    rel = os.path.relpath(path, m.ws.root) if path.startswith(str(m.ws.root)) else path
                    at.add_row(n, short_hash(v.get("sha256")), fmt_bytes(v.get("bytes")), rel)
                parts += [Text("Artifacts", style="bold underline"), at]
            log = m.ws.job_log(st.latest.job_id)
            if log.exists():
                tail = LogTail(log, initial=LOG_LINES * 8)  # a step is a progress and its metrics
                events = [ev for ev in (parse_event(tail.line(i)) for i in range(len(tail))) if ev]
                tail.close()
                lines = [Text(text, style=KIND_STYLE.get(kind, ""), no_wrap=True, overflow="ellipsis")
                         for kind, text in list(human_lines(events))[-LOG_LINES:]]
                parts += [Text(f"Log {st.latest.job_id} (l or Enter: open, o: stdout/stderr)", style="bold underline"),
                          *lines]
        if running:
            parts += [Text("Parameters", style="bold underline"), params]
        return head, Group(*parts)
