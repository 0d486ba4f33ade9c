"""One view of a workspace for people: what runs, what waits and why.

Shared by ``pmat status`` and the console so both say the same thing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.approvals import revoked, round_verdicts
from engine.chain import verify_chain
from engine.dag import Blocker, critical_path, expand_targets, topo_order, why_not_running
from engine.eta import Eta, estimate, profiles
from engine.inbox import Run, queued_commands, supervisor_down, supervisor_identity
from engine.spec import PipelineSpec, load_spec, parse_spec
from engine.state import Attempt, PipelineState
from engine.text import fmt_duration
from engine.workspace import Workspace


def load_spec_fast(path: Path, *, check_params: bool = True) -> PipelineSpec:
    """``load_spec`` with libyaml's parser (10x faster on a 200-stage spec); errors come from ``load_spec``.

    ``check_params=False`` checks keys, references and cycles but not each stage's parameters
    against its module's ``Params``: importing every stage module pulls in torch and
    transformers (~4 s), which the console must not wait for before its first frame. The
    console runs the full check (``pmat check``) in a background process.
    """
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is not None:
        try:
            return parse_spec(yaml.load(path.read_text(), Loader=loader), str(path), check_params=check_params)
        except (OSError, yaml.YAMLError, TypeError, ValueError):
            pass  # load_spec says what is wrong, in its one-line form
    return load_spec(path)


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
    approval: str  # none | required | approved | revoked
    job_id: str | None
    error: str | None = None
    rates: list[float] = field(default_factory=list)
    eta_pm_s: float | None = None  # the ETA's uncertainty (one standard error), seconds
    revoked: str | None = None  # why the approval a gated stage was granted (or ran on) no longer holds
    executor: str = "local"  # where its latest attempt runs: local | slurm (docs/SCALEOUT.md)
    slurm_id: str | None = None
    gpus: list[int] | None = None
    executor_state: str | None = None  # the scheduler's word: "PENDING (Resources)", "RUNNING on node3"

    def where(self) -> str:
        """Where its latest attempt runs, for people (see ``placement``)."""
        return placement(self.executor, self.slurm_id, self.gpus, self.executor_state)


@dataclass
class Overview:
    workspace: str
    pipeline: str
    supervisor_pid: int | None
    critical_path: list[str]
    critical_hours: float
    remaining_hours: float
    rows: list[StageRow]
    left_s: float = 0.0  # to the end of the remaining critical path, running stages by their ETA
    supervisor_down: str | None = None  # why no supervisor runs and how to restart it (None: it runs)
    bad_events: int = 0  # log lines skipped for breaking their schema
    damage: list[str] = field(default_factory=list)  # "FILE:LINE: why" of the latest of them
    chain_break: str | None = None  # the journal's first broken line: approvals after it do not count
    ledger_break: str | None = None  # the ledger's: records after it do not count

    def log_warning(self) -> str | None:
        """One line on damaged logs (details: ``damage``, ``chain_break``, ``ledger_break``)."""
        parts = [f"journal chain broken: {self.chain_break}; approvals after it do not count"] if self.chain_break else []
        if self.ledger_break:
            parts.append(f"ledger chain broken: {self.ledger_break}; records after it do not count")
        if self.bad_events:
            parts.append(f"{self.bad_events} damaged log line(s) skipped, latest {self.damage[-1] if self.damage else '?'}")
        return "; ".join(parts) or None

    def counts(self) -> dict[str, int]:
        """Stages running, blocked on a person or on memory, failed, done, and in all."""
        out = {"running": 0, "blocked": 0, "failed": 0, "done": 0, "total": len(self.rows)}
        for r in self.rows:
            if r.status in out:
                out[r.status] += 1
            elif r.status in ("crashed",):
                out["failed"] += 1
            elif r.reason_kind in BLOCKING:
                out["blocked"] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summary(ov: Overview) -> list[tuple[str, str]]:
    """(text, style) pieces of ``3 running · 1 blocked · ~4m12s left``."""
    c = ov.counts()
    if c["total"] and c["done"] == c["total"]:
        return [("all done", "bold green")]
    out = [(f"{c['running']} running", "bold green" if c["running"] else "dim")]
    if c["blocked"]:
        out.append((f"{c['blocked']} blocked", "bold yellow"))
    if c["failed"]:
        out.append((f"{c['failed']} failed", "bold red"))
    out.append((f"{c['done']}/{c['total']} done", "dim"))
    if ov.left_s:
        out.append((f"~{fmt_duration(ov.left_s)} left", "bold"))
    return out


BLOCKING = ("needs_approval", "memory", "failed_dependency")
def pending_runs(ws: Workspace, spec: PipelineSpec) -> set[str]:
    """Stages that run commands still in the inbox will request: the supervisor has not taken
    them yet (it is starting, busy, or not running)."""
    out: set[str] = set()
    for cmd in queued_commands(ws):
        if isinstance(cmd, Run) and isinstance(stages := expand_targets(spec, list(cmd.targets)), set):
            out |= stages
    return out


def time_left(spec: PipelineSpec, state: PipelineState, eta_s: dict[str, float | None]) -> float:
    """Seconds to the end of the remaining critical path: stages under way by their ETA."""
    left_h = {name: eta / 3600 for name, eta in eta_s.items() if eta is not None}
    return critical_path(spec, state, remaining=True, left_h=left_h)[1] * 3600


def build_overview(ws: Workspace, spec: PipelineSpec, state: PipelineState, now: float | None = None) -> Overview:
    now = now or time.time()
    ident = supervisor_identity(ws)
    inbox = pending_runs(ws, spec)
    prof = profiles(spec)
    etas = {name: estimate(st, now, prof.get(name)) for name, st in state.stages.items() if st.status == "running"}
    path, hours = critical_path(spec, state)
    remaining = time_left(spec, state, {name: e.eta_s for name, e in etas.items()}) / 3600
    on_path = set(path)
    rows = []
    verdicts = round_verdicts(spec, ws)  # every gated stage's evidence reads the same verdicts
    for name in topo_order(spec):
        entry = spec.stages[name]
        st = state.stage(name)
        a = st.latest
        grant = state.approvals.get(name)
        lapsed = revoked(spec, ws, name, grant, verdicts)
        approved = lapsed is None
        # revoked: granted once (or the stage ran) and no longer holding; never approved is just "required"
        why_revoked = lapsed.removesuffix(": revoked") if lapsed and (grant is not None or st.status == "done") else None
        b = why_not_running(spec, state, name, approved=approved)
        # the supervisor's journaled reason knows the memory figures; the DAG knows the rest
        reason = st.waiting if b.kind == "queued" and st.waiting else b.text
        if b.kind == "not_requested" and name in inbox:
            b = Blocker("queued", "requested: " + ("the supervisor is taking the command" if ident
                                                   else "waiting for a supervisor (pmat supervise)"))
            reason = b.text
        e = etas.get(name, Eta())
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
            rate_per_h=e.rate * 3600 if e.rate else None,
            eta_s=e.eta_s,
            elapsed_s=elapsed,
            rss=a.rss if a and a.running else 0,
            peak_rss=a.peak_rss if a else 0,
            gpu=a.gpu if a else None,
            critical=name in on_path,
            approval="approved" if approved else "revoked" if why_revoked else entry.approval,
            job_id=a.job_id if a else None,
            error=a.error if a else None,
            rates=[r * 3600 for r in st.rate_series()],
            eta_pm_s=e.pm_s,
            revoked=why_revoked,
            **_executor(a.identity if a else None, a.executor_state if a else None),
        ))
    ledger = verify_chain(ws.ledger_path)
    return Overview(str(ws.root), spec.name, ident.pid if ident else None, path, hours, remaining, rows,
                    left_s=remaining * 3600, supervisor_down=None if ident else supervisor_down(ws),
                    bad_events=state.bad_events, damage=list(state.damage), chain_break=state.chain_break,
                    ledger_break=None if ledger.ok else ledger.reason)


def placement(executor: str, slurm_id: str | None, gpus: list[int] | None, executor_state: str | None) -> str:
    """``slurm 41 PENDING (Resources)``, ``local gpus 0,1``; empty for a plain local job."""
    parts = [] if executor == "local" else [executor, slurm_id or "", executor_state or ""]
    parts += [f"gpus {','.join(map(str, gpus))}"] if gpus else []
    return " ".join(p for p in parts if p)


def attempt_placement(a: Attempt) -> str:
    """Where one attempt ran or runs (``placement`` of its journaled identity)."""
    return placement(**_executor(a.identity, a.executor_state))


def _executor(identity: dict[str, Any] | None, state: str | None) -> dict[str, Any]:
    """The row's executor fields from a ``launched`` identity (none: an older journal, local)."""
    ident = identity if isinstance(identity, dict) else {}
    gpus = ident.get("gpus")
    slurm = ident.get("slurm_id")
    return {"executor": str(ident.get("executor") or "local"), "slurm_id": None if slurm is None else str(slurm),
            "gpus": [int(g) for g in gpus] if isinstance(gpus, list) and all(isinstance(g, int) for g in gpus) else None,
            "executor_state": state}
