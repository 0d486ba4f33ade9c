"""What the console knows: a fold over the workspace's logs, plus the commands it may send.

The console is a client (docs/ARCHITECTURE.md, principle 6): everything shown here is derived from
``PipelineState`` and the files of the workspace, and every action is a command file
for the supervisor. ``refresh()`` separates cheap updates (progress of running jobs)
from structural ones (the overview with reasons and the critical path), so an idle
console stays idle while jobs write many events a second.
"""

from __future__ import annotations

import ast
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.approvals import stage_evidence
from engine.eta import profiles
from engine.gates import evaluate_gates
from engine.inbox import COMMANDS, send_command, supervisor_identity
from engine.memory import MemorySnapshot, admission_headroom, snapshot
from engine.overview import Overview, StageRow, build_overview, estimate, load_spec_fast, time_left
from engine.results import read_ledger
from engine.spec import GIB, PipelineSpec
from engine.state import Attempt, PipelineState
from engine.text import fmt_duration
from engine.workspace import Workspace

STATUS_STYLE = {
    "running": ("▶", "bold green"),
    "done": ("✔", "green"),
    "queued": ("…", "yellow"),
    "pending": ("○", "dim"),
    "failed": ("✘", "bold red"),
    "crashed": ("✘", "bold red"),
    "cancelled": ("■", "magenta"),
}
BLOCKED_STYLE = {
    "needs_approval": ("◆", "bold cyan"),
    "memory": ("▲", "bold yellow"),
    "failed_dependency": ("⊘", "red"),
}
REVOKED_STYLE = ("◇", "bold magenta")  # a gated stage whose approval no longer holds
GATE_STYLE = {
    "pass": ("✔", "green"),
    "fail": ("✘", "bold red"),
    "no data": ("?", "dim"),
    "stale": ("↻", "yellow"),
}
SUPERVISOR_CHECK_S = 1.0  # a dead supervisor is said at once (one lock-file read and a /proc stat)
LEFT_EVERY_S = 5.0  # the time left in the header is recomputed at most this often between rebuilds


def status_mark(row: StageRow) -> tuple[str, str]:
    """Symbol and style of a stage: its status, or what blocks it when it waits."""
    if row.revoked:
        return REVOKED_STYLE
    if row.status in ("queued", "pending") and row.reason_kind in BLOCKED_STYLE:
        return BLOCKED_STYLE[row.reason_kind]
    return STATUS_STYLE.get(row.status, ("?", ""))


@dataclass
class GateRow:
    """One acceptance criterion as the console shows it."""

    ac: str
    description: str
    work_item: str | None
    status: str  # pass | fail | no data | stale
    value: str | None = None
    threshold: str | None = None
    checkpoint: str | None = None
    evidence: dict[str, Any] | None = None
    detail: str = ""
    gated_stages: list[str] = field(default_factory=list)


@dataclass
class Sent:
    """A command the console sent, until the supervisor's journal answers it."""

    cid: str
    command: str
    target: str
    at: float


_OPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}


def thresholds(expr: str) -> str | None:
    """The constants a criterion compares against ('>= 0.85'), for the value-vs-threshold column."""
    out = []
    for node in ast.walk(ast.parse(expr, mode="eval")):
        if isinstance(node, ast.Compare):
            for op, right in zip(node.ops, node.comparators, strict=True):
                if isinstance(right, ast.Constant) and type(op) in _OPS:
                    out.append(f"{_OPS[type(op)]} {right.value:g}")
    return ", ".join(out) or None


class ConsoleModel:
    """Reads a workspace; sends commands unless read-only."""

    def __init__(
        self,
        ws: Workspace,
        spec: PipelineSpec | None = None,
        *,
        readonly: bool = False,
        now: Callable[[], float] | None = None,
        memory_probe: Callable[[], MemorySnapshot] | None = None,
    ) -> None:
        self.ws = ws
        self.spec = spec or load_spec_fast(ws.spec_path, check_params=False)
        self.profiles = profiles(self.spec)  # measured phases for the ETAs, read once
        self.readonly = readonly
        self.now = now or time.time
        self.memory_probe = memory_probe or snapshot
        self.state = PipelineState(ws)
        self.overview: Overview | None = None
        self.rows: dict[str, StageRow] = {}
        self.sent: list[Sent] = []
        self._signature: tuple = ()
        self._supervisor_checked_at = 0.0
        self._supervisor: int | None = None
        self.watched: list[Attempt] = []  # jobs not finished at the last rebuild
        self._journal_last: dict[str, Any] | None = None
        self._left_at = 0.0

    # -- folding ----------------------------------------------------------------
    def _sig(self) -> tuple:
        """Changes when the overview must be rebuilt: a journal event, a new log, a watched job ending."""
        last = self.state.journal[-1] if self.state.journal else None
        watched = tuple((a.outcome, a.started_at is not None) for a in self.watched)
        return (len(self.state.journal), last and last.get("ts"), len(self.state.jobs), watched)

    def refresh(self, force: bool = False) -> tuple[bool, bool]:
        """Fold new events. Returns (anything changed, structure changed)."""
        changed = self.state.refresh()
        now = time.monotonic()
        if now - self._supervisor_checked_at > SUPERVISOR_CHECK_S:  # a supervisor that died journals nothing
            self._supervisor_checked_at = now
            self._supervisor = self.supervisor_pid()
        sig = (*self._sig(), self._supervisor)
        structural = force or self.overview is None or sig != self._signature
        if structural:
            self.watched = [a for a in self.state.jobs.values() if a.outcome is None]
            self._signature = (*self._sig(), self._supervisor)
            self.overview = build_overview(self.ws, self.spec, self.state, now=self.now())
            self.rows = {r.stage: r for r in self.overview.rows}
        else:
            self._update_running_rows()  # also without events: ETAs count down
        return changed or structural, structural

    def _update_running_rows(self) -> None:
        """Progress, rate, ETA and resources of running stages, without rebuilding the overview."""
        now = self.now()
        for a in self.watched:
            if not a.running:
                continue
            row = self.rows.get(a.stage)
            if row is None or row.job_id != a.job_id:
                continue
            e = estimate(self.state.stage(a.stage), now, self.profiles.get(a.stage))
            row.done, row.total, row.unit = a.done, a.total, a.unit
            row.rate_per_h = e.rate * 3600 if e.rate else None
            row.eta_s, row.eta_pm_s = e.eta_s, e.pm_s
            row.elapsed_s = now - a.started_at if a.started_at else None
            row.rss, row.peak_rss, row.gpu = a.rss, a.peak_rss, a.gpu
        mono = time.monotonic()
        if self.overview is not None and mono - self._left_at >= LEFT_EVERY_S and any(a.running for a in self.watched):
            self._left_at = mono  # the header's "left" counts down (a critical path: ms on 200 stages)
            self.overview.left_s = time_left(self.spec, self.state, {r.stage: r.eta_s for r in self.rows.values()
                                                                      if r.status == "running"})

    def answers(self) -> list[tuple[Sent, str, str | None]]:
        """(command, 'done'|'rejected', reason) for commands the journal answered since the last call."""
        fresh: list[dict[str, Any]] = []
        for ev in reversed(self.state.journal):  # the journal deque is bounded: find what is new by identity
            if ev is self._journal_last:
                break
            fresh.append(ev)
        fresh.reverse()
        if self.state.journal:
            self._journal_last = self.state.journal[-1]
        pending = {s.cid: s for s in self.sent}
        verdict: dict[str, tuple[str, str | None]] = {}
        for ev in fresh:
            cid = ev.get("id") or ""
            if cid in pending and ev.get("kind") in ("command_received", "command_rejected"):
                if ev["kind"] == "command_rejected" or cid not in verdict:
                    verdict[cid] = ("rejected" if ev["kind"] == "command_rejected" else "done", ev.get("reason"))
        out = []
        for cid, (what, reason) in verdict.items():
            out.append((pending[cid], what, reason))
            self.sent.remove(pending[cid])
        return out

    # -- queries ----------------------------------------------------------------
    def log_sizes(self) -> tuple[int, int]:
        """(number of job logs, their bytes): how long the first fold will take."""
        try:
            sizes = [e.stat().st_size for e in os.scandir(self.ws.logs_dir / "jobs") if e.name.endswith(".jsonl")]
        except FileNotFoundError:
            sizes = []
        return len(sizes), sum(sizes)

    def supervisor_pid(self) -> int | None:
        ident = supervisor_identity(self.ws)
        return ident.pid if ident else None

    def running(self) -> list[Attempt]:
        return sorted(self.state.running(), key=lambda a: a.launched_at or 0)

    def recent_finished(self, n: int = 3) -> list[Attempt]:
        done = [a for a in self.state.jobs.values() if a.outcome is not None]
        return sorted(done, key=lambda a: a.finished_at or 0)[-n:]

    def job_of(self, stage: str) -> str | None:
        return self.state.job_of(stage)

    def memory(self) -> dict[str, Any]:
        """Available memory, PSI, per-job use, reservations and admission headroom."""
        snap = self.memory_probe()
        s = self.spec.settings
        running = self.running()
        budget = int(s.memory_budget_gb * GIB) if s.memory_budget_gb else None
        headroom = admission_headroom(snap.available, [(a.reservation, a.rss) for a in running],
                                      int(s.memory_margin_gb * GIB), budget)
        return {"snapshot": snap, "running": running, "headroom": headroom, "budget": budget,
                "margin": int(s.memory_margin_gb * GIB)}

    def gates(self) -> list[GateRow]:
        """Every acceptance criterion with its verdict from ``engine.gates`` and the records behind it."""
        verdicts = evaluate_gates(self.spec, self.ws)  # a view: the hash cache is kept by approvals and stages
        ledger = {r["id"]: r for r in read_ledger(self.ws)}
        rows = []
        for ac, crit in self.spec.acceptance.items():
            g = verdicts[ac]
            gated = self.spec.gated_by(ac)
            checkpoint = crit.checkpoint or ", ".join(f"{k}={v}" for k, v in crit.checkpoints.items())
            value = ", ".join(f"{v:.4g}" for v in g.values.values()) or None
            records = [ledger[i] for i in g.evidence if i in ledger]
            evidence = {
                "checkpoints": {k or "checkpoint": (h[:12] if h else None) for k, h in g.checkpoints.items()},
                "records": [{"id": r["id"], "benchmark": r.get("benchmark"), "model_hash": str(r.get("model_hash"))[:12],
                             "metrics": r.get("metrics"), "age": fmt_duration(self.now() - r["ts"]) if r.get("ts") else "-"}
                            for r in records],
            }
            if g.missing:
                evidence["missing"] = g.missing
            if g.ignored:
                evidence["ignored"] = g.ignored
            rows.append(GateRow(ac, crit.description, crit.work_item, g.outcome.replace("_", " "), value,
                                thresholds(crit.expr), checkpoint, evidence, g.reason or crit.expr, gated))
        return rows

    def evidence(self, stage: str) -> dict[str, Any]:
        return stage_evidence(self.spec, self.ws, stage)

    # -- commands ---------------------------------------------------------------
    def send(self, command: str, target: str, **args: Any) -> Sent:
        """Write a command for the supervisor; refused outright in read-only mode."""
        if self.readonly:
            raise PermissionError("read-only console: no commands are sent")
        cid = send_command(self.ws, COMMANDS[command].aimed(target, **args))
        s = Sent(cid, command, target, self.now())
        self.sent.append(s)
        return s
