"""Pipeline state as a fold over the supervisor's journal and the jobs' event logs.

Nothing here is stored: ``PipelineState.refresh()`` reads whatever was appended
since the last call (by byte offset) and folds it in. A fresh process rebuilds
the same state from the same files, which is how the console, ``pmat status``
and a restarted supervisor agree.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from engine.chain import line_digest, verify_chain
from engine.events import EventReader, invalid, job_id_ok
from engine.jsonl import parse
from engine.workspace import Workspace

PROGRESS_HISTORY = 512
METRIC_HISTORY = 4096
RATE_WINDOW_S = 900.0
DAMAGE_HISTORY = 100
_NUM = (int, float)
_NUM_OR_NONE = (int, float, type(None))


@dataclass
class Attempt:
    """One run of a stage: job id ``<stage>.<attempt>``."""

    job_id: str
    stage: str
    attempt: int
    launched_at: float | None = None
    identity: dict[str, Any] | None = None
    reservation: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    outcome: str | None = None  # ok | failed | cancelled | crashed
    error: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    done: float = 0
    total: float | None = None
    unit: str = "items"
    progress: deque = field(default_factory=lambda: deque(maxlen=PROGRESS_HISTORY))
    metrics: dict[str, deque] = field(default_factory=dict)
    rss: int = 0
    peak_rss: int = 0
    gpu: int | None = None
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoints: int = 0
    warnings: list[str] = field(default_factory=list)
    last_event_at: float | None = None
    executor_state: str | None = None  # the scheduler's word on the job: "PENDING (Resources)" (slurm)

    @property
    def running(self) -> bool:
        return self.launched_at is not None and self.outcome is None

    def metric_series(self, name: str) -> list[tuple[int | None, float]]:
        return [(s, v) for s, v, _ in self.metrics.get(name, ())]


@dataclass
class StageState:
    name: str
    attempts: list[Attempt] = field(default_factory=list)
    requested: bool = False
    waiting: str | None = None
    cancel_requested: bool = False
    retry_pending: bool = False  # a new attempt is queued after a finished one

    @property
    def latest(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def done(self) -> bool:
        return self.latest is not None and self.latest.outcome == "ok"

    @property
    def status(self) -> str:
        """pending | queued | running | done | failed | crashed | cancelled."""
        a = self.latest
        if a is None:
            return "queued" if self.requested else "pending"
        if a.outcome is None:
            return "running" if a.launched_at is not None else "queued"
        if self.retry_pending:
            return "queued"
        return {"ok": "done"}.get(a.outcome, a.outcome)

    def rate_eta(self, now: float | None = None) -> tuple[float | None, float | None]:
        """Units per second and seconds to go, from the job's own event timestamps.

        Progress of earlier attempts counts (a resumed stage continues its count),
        so the rate is right the moment a console opens, also after a resume.
        """
        a = self.latest
        if a is None or a.total is None:
            return None, None
        hist = list(chain.from_iterable(b.progress for b in self.attempts[-2:]))
        if len(hist) < 2:
            return None, None
        end_ts, end_done = hist[-1]
        since, start = end_ts - RATE_WINDOW_S, hist[0]
        for p in hist:  # a loop, not next(genexpr): a console asks for every running job at every tick
            if p[0] >= since and p[1] <= end_done:
                start = p
                break
        dt, dd = end_ts - start[0], end_done - start[1]
        if dt <= 0 or dd <= 0:
            return None, None
        rate = dd / dt
        eta = max(0.0, (a.total - a.done) / rate)
        if now is not None and a.outcome is None:
            eta = max(0.0, eta - (now - end_ts))
        return rate, eta

    def rate_series(self, buckets: int = 24) -> list[float]:
        """Rates between successive progress events, for a sparkline: the last ``buckets``, found
        from the newest event back (a finished stage holds 512 events; the overview asks every stage)."""
        out: list[float] = []
        later = None
        for t0, d0 in chain.from_iterable(reversed(a.progress) for a in reversed(self.attempts[-2:])):
            if later is not None:
                t1, d1 = later
                if t1 > t0 and d1 >= d0:
                    out.append((d1 - d0) / (t1 - t0))
                    if len(out) == buckets:
                        break
            later = t0, d0
        out.reverse()
        return out


class PipelineState:
    """Everything known about a workspace, rebuilt from its logs."""

    def __init__(self, workspace: Workspace) -> None:
        self.ws = workspace
        self.stages: dict[str, StageState] = {}
        self.jobs: dict[str, Attempt] = {}
        self.approvals: dict[str, dict[str, Any]] = {}
        self.supervisor: dict[str, Any] | None = None
        self.journal: deque = deque(maxlen=2000)
        self.processed_commands: set[str] = set()  # applied or rejected: never run again
        self.received_commands: set[str] = set()
        self.ended_in_journal: set[str] = set()  # jobs whose end the journal holds (a lost job log loses nothing)
        self.bad_events = 0  # lines of any log that broke their schema and were skipped
        self.damage: deque[str] = deque(maxlen=DAMAGE_HISTORY)  # "FILE:LINE: why" of the latest
        self.chain_break: str | None = None  # the journal's first broken line; approvals after it do not count
        self._journal_prev: str | None = None
        self._journal_reader = EventReader(workspace.journal_path)
        self._job_readers: dict[str, EventReader] = {}
        self._finished_logs: set[str] = set()
        self._jobs_dir = workspace.logs_dir / "jobs"
        self._listing: list[str] = []
        self._listed_mtime: int | None = None

    # -- access -----------------------------------------------------------------
    def stage(self, name: str) -> StageState:
        st = self.stages.get(name)
        if st is None:
            st = self.stages[name] = StageState(name)
        return st

    def attempt(self, job_id: str) -> Attempt:
        a = self.jobs.get(job_id)
        if a is None:
            stage, _, n = job_id.rpartition(".")
            a = Attempt(job_id, stage, int(n) if n.isdigit() else 0)
            self.jobs[job_id] = a
            st = self.stage(stage)
            st.attempts.append(a)
            st.attempts.sort(key=lambda x: x.attempt)
        return a

    def running(self) -> list[Attempt]:
        return [a for a in self.jobs.values() if a.running]

    def job_of(self, target: str) -> str | None:
        """The job a job id or a stage name (its latest job) names; None when there is none."""
        if target in self.jobs:
            return target
        st = self.stages.get(target)
        return st.latest.job_id if st and st.latest else None

    # -- folding ----------------------------------------------------------------
    def refresh(self) -> bool:
        """Fold in everything appended since the last call; True if anything changed."""
        changed = False
        reader = self._journal_reader
        resets = reader.resets
        lines = reader.poll_lines()
        if reader.resets != resets:  # the journal was replaced or truncated: fold it again
            self._journal_prev = None
        for number, line in enumerate(lines, reader.line + 1):
            ev = parse(line)
            self._check_chain(line, ev, number)
            why = invalid(ev) if line else None
            if why:
                self._damaged(self.ws.journal_path, number, why)
            elif ev is not None:
                self._apply_journal(ev)
                changed = True
        changed |= self._scan_job_logs()
        return changed

    def _damaged(self, path: Path, line: int, why: str) -> None:
        self.bad_events += 1
        self.damage.append(f"{path}:{line}: {why}")

    def _check_chain(self, line: bytes, ev: Any, number: int) -> None:
        """Follow the journal's hash chain (engine/chain.py); at the first line that does not
        follow, ask ``verify_chain`` (which honours a break the user accepted) once."""
        if not line or self.chain_break:
            return
        prev = ev.get("prev") if isinstance(ev, dict) else None
        if self._journal_prev is not None and prev != self._journal_prev or self._journal_prev is None and prev not in ("", None):
            report = verify_chain(self.ws.journal_path)
            if not report.ok and report.broken_line is not None and report.broken_line <= number:
                self.chain_break = report.reason
        self._journal_prev = line_digest(line)

    def _job_log_names(self, jobs_dir: Path) -> list[str]:
        """Names of the job logs. The directory is listed again only when its mtime changed (a log
        created, renamed or removed; appends leave it alone) or the last listing was made within a
        second of that mtime (a coarse clock can give a second change the same mtime)."""
        try:
            mtime = os.stat(jobs_dir).st_mtime_ns
        except FileNotFoundError:
            return []
        if mtime != self._listed_mtime:
            self._listing = [e.name for e in os.scandir(jobs_dir) if e.name.endswith(".jsonl")]
            self._listed_mtime = mtime if time.time_ns() - mtime > 1_000_000_000 else None
        return self._listing

    def _scan_job_logs(self) -> bool:
        changed = False
        jobs_dir = self._jobs_dir
        names = self._job_log_names(jobs_dir)
        for name in names:
            if name in self._finished_logs:
                continue
            job_id = name[: -len(".jsonl")]
            reader = self._job_readers.get(job_id)
            if reader is None:
                reader = self._job_readers[job_id] = EventReader(jobs_dir / name)
            a: Attempt | None = None
            apply = self._apply_job
            if not job_id_ok(job_id):
                continue
            lines = reader.poll_lines()
            for number, line in enumerate(lines, reader.line + 1):  # streamed: a 1 GB log is never held as one list
                ev = parse(line)
                if type(ev) is dict and ev.get("kind") == "progress" and type(ts := ev.get("ts")) in _NUM \
                        and type(done := ev.get("done")) in _NUM and type(total := ev.get("total")) in _NUM_OR_NONE \
                        and type(unit := ev.get("unit", "items")) is str:
                    # most events, checked and folded inline (the fold of 100k events is a console's first frame)
                    if a is None:
                        a = self.attempt(job_id)
                    a.last_event_at = ts
                    a.done, a.total, a.unit = done, total, unit
                    a.progress.append((ts, done))
                    continue
                why = invalid(ev) if line else None
                if why or not isinstance(ev, dict):
                    reader.bad_lines += bool(line)
                    if why:
                        self._damaged(reader.path, number, why)
                    continue
                if a is None:
                    a = self.attempt(job_id)
                apply(a, ev)
            if a is not None:
                changed = True
                if a.finished_at is not None:
                    self._finished_logs.add(name)
        return changed

    def _apply_job(self, a: Attempt, ev: dict[str, Any]) -> None:
        kind = ev.get("kind")
        ts = ev.get("ts", 0.0)
        a.last_event_at = ts
        if kind == "progress":
            a.done = ev.get("done", 0)
            a.total = ev.get("total")
            a.unit = ev.get("unit", a.unit)
            a.progress.append((ts, a.done))
        elif kind == "metric":
            series = a.metrics.get(ev["name"])
            if series is None:
                series = a.metrics[ev["name"]] = deque(maxlen=METRIC_HISTORY)
            series.append((ev.get("step"), ev.get("value"), ts))
        elif kind == "resource":
            a.rss = ev.get("rss", 0)
            a.peak_rss = max(a.peak_rss, ev.get("peak_rss", 0))
            a.gpu = ev.get("gpu")
        elif kind == "job_started":
            a.started_at = ts
            a.params = ev.get("params", {})
            a.identity = a.identity or {k: ev[k] for k in ("pid", "start_ticks", "boot_id") if k in ev}
            a.launched_at = a.launched_at or ts
        elif kind == "job_finished":
            a.finished_at = ts
            a.outcome = ev.get("outcome")
            a.error = ev.get("error")
            a.peak_rss = max(a.peak_rss, ev.get("peak_rss") or 0)
        elif kind == "artifact":
            a.artifacts[ev["name"]] = {"path": ev.get("path"), "sha256": ev.get("sha256"), "bytes": ev.get("bytes")}
        elif kind == "checkpoint":
            a.checkpoints += 1
        elif kind == "warning":
            if ev.get("message") != "traceback":
                a.warnings.append(ev.get("message", ""))

    def _apply_journal(self, ev: dict[str, Any]) -> None:
        self.journal.append(ev)
        kind = ev.get("kind")
        if kind == "supervisor_started":
            self.supervisor = ev
        elif kind == "queued":
            st = self.stage(ev["stage"])
            st.requested = True
            st.cancel_requested = False
            st.retry_pending = st.latest is not None and st.latest.outcome not in (None, "ok")
        elif kind == "waiting":
            self.stage(ev["stage"]).waiting = ev.get("reason")
        elif kind == "launched":
            a = self.attempt(ev["job_id"])
            a.launched_at = ev["ts"]
            a.identity = ev.get("identity")
            a.reservation = ev.get("reservation", 0)
            st = self.stage(a.stage)
            st.waiting = None
            st.retry_pending = False
        elif kind in ("crashed", "cancelled", "finished"):
            a = self.attempt(ev["job_id"])
            self.ended_in_journal.add(a.job_id)
            if a.outcome is None:
                a.outcome = ev["outcome"] if kind == "finished" else kind
                a.error = ev.get("error" if kind == "finished" else "reason")
                a.finished_at = ev["ts"]
                a.peak_rss = max(a.peak_rss, ev.get("peak_rss") or 0)
        elif kind == "executor_state":
            self.attempt(ev["job_id"]).executor_state = ev.get("state")
        elif kind == "approval_granted":
            if self.chain_break is None:
                self.approvals[ev["target"]] = ev
        elif kind == "approval_revoked":
            self.approvals.pop(ev["target"], None)
        elif kind == "cancel_requested":
            self.stage(ev["stage"]).cancel_requested = True
        elif kind == "command_received":
            self.received_commands.add(ev["id"])
        elif kind in ("command_applied", "command_rejected"):
            self.processed_commands.add(ev["id"])
        elif kind == "unrequested":
            self.stage(ev["stage"]).requested = False


def load_state(workspace: Workspace) -> PipelineState:
    st = PipelineState(workspace)
    st.refresh()
    return st

