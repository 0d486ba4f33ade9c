"""One view of a workspace for people: what runs, what waits and why.

Shared by ``pmat status`` and the console so both say the same thing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.approvals import approval_current
from engine.dag import critical_path, topo_order, why_not_running
from engine.spec import PipelineSpec
from engine.state import PipelineState
from engine.supervisor import supervisor_identity
from engine.workspace import Workspace


@dataclass
class StageRow:
    stage: str
    kind: str
    work_item: str | None
    status: str
    reason: str
    reason_kind: str
    attempts: int
    done: float | None
    total: float | None
    unit: str
    rate_per_h: float | None
    eta_s: float | None
    elapsed_s: float | None
    rss: int
    peak_rss: int
    gpu: int | None
    critical: bool
    approval: str  # none | required | approved
    job_id: str | None
    error: str | None = None
    rates: list[float] = field(default_factory=list)


@dataclass
class Overview:
    workspace: str
    pipeline: str
    supervisor_pid: int | None
    critical_path: list[str]
    critical_hours: float
    remaining_hours: float
    rows: list[StageRow]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_overview(ws: Workspace, spec: PipelineSpec, state: PipelineState, now: float | None = None) -> Overview:
    now = now or time.time()
    path, hours = critical_path(spec, state)
    _, remaining = critical_path(spec, state, remaining=True)
    on_path = set(path)
    rows = []
    for name in topo_order(spec):
        entry = spec.stages[name]
        st = state.stage(name)
        a = st.latest
        approved = approval_current(spec, ws, name, state.approvals.get(name))
        b = why_not_running(spec, state, name, approved=approved)
        # the supervisor's journaled reason knows the memory figures; the DAG knows the rest
        reason = st.waiting if b.kind == "queued" and st.waiting else b.text
        rate, eta = st.rate_eta(now)
        elapsed = None
        if a and a.started_at:
            elapsed = (a.finished_at or now) - a.started_at
        rows.append(StageRow(
            stage=name,
            kind=entry.kind,
            work_item=entry.work_item,
            status=st.status,
            reason=reason,
            reason_kind=b.kind,
            attempts=len(st.attempts),
            done=a.done if a else None,
            total=a.total if a else None,
            unit=a.unit if a else "",
            rate_per_h=rate * 3600 if rate else None,
            eta_s=eta,
            elapsed_s=elapsed,
            rss=a.rss if a and a.running else 0,
            peak_rss=a.peak_rss if a else 0,
            gpu=a.gpu if a else None,
            critical=name in on_path,
            approval="approved" if approved else entry.approval,
            job_id=a.job_id if a else None,
            error=a.error if a else None,
            rates=[r * 3600 for r in st.rate_series()],
        ))
    ident = supervisor_identity(ws)
    return Overview(str(ws.root), spec.name, ident.pid if ident else None, path, hours, remaining, rows)
