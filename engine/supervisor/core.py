"""The supervisor daemon: its lock, its journal, and the rounds that watch, queue, admit,
launch and reap jobs (the inbox commands are ``commands.py``, a mixin of it).

On start it folds the journal and job logs, re-attaches to jobs that are still alive (by pid +
start ticks + boot id), reports the ones that died without ``job_finished`` as crashed and
resumes them when their stage allows. The journal is hash-chained (engine/chain.py). An I/O
error in a round is printed and journaled with its path and the supervisor goes on; a stage that
failed because its disk was full is resumed by itself once space is back.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.approvals import Verdicts, approval_current, round_verdicts
from engine.chain import append_chained
from engine.dag import topo_order, why_not_running
from engine.disk import apply_retention, disk_wait_reason
from engine.executors import job_handle, launch_job
from engine.executors.gpus import admit_gpus
from engine.hardware import current_pool
from engine.inbox import supervisor_identity
from engine.kinds import load_stage
from engine.memory import GIB, admission_headroom
from engine.preflight import stage_input_problem
from engine.procs import ProcIdentity, reap_children
from engine.refs import resolve_params, resolve_ref
from engine.resume import (
    DISK_FULL_BELOW,
    DiskWatch,
    free_bytes,
    resumable,
    waits_for_space,
    will_resume,
)
from engine.sdk.base import JobSpec
from engine.sdk.launch import job_argv
from engine.sdk.run import params_hash
from engine.spec import PipelineSpec, load_spec
from engine.state import PipelineState
from engine.supervisor.commands import InboxCommands
from engine.workspace import Workspace

BAD_INPUT = "bad input: "  # the waiting reason of a stage whose inputs a run would fail on
RECHECK_INPUTS_S = 5.0


class SupervisorRunning(RuntimeError):
    """Another supervisor holds this workspace's lock."""


# -- the daemon --------------------------------------------------------------------
class Supervisor(InboxCommands):
    def __init__(self, ws: Workspace, spec: PipelineSpec | None = None) -> None:
        self.ws = ws.init()
        self.spec = spec or load_spec(ws.spec_path)
        self.state = PipelineState(ws)
        self._batch: list[dict[str, Any]] | None = None
        self._printed: set[str] = set()  # problems printed
        self._reported: set[str] = set()  # problems journaled
        self._pending: dict[str, float] = {}  # problems not journaled yet -> when first seen
        self.disk = DiskWatch()
        self._inputs_checked: dict[str, float] = {}  # stage -> when its inputs were last found bad
        self._lock_fd: int | None = None
        self._kill_deadlines: dict[str, float] = {}
        self._order = topo_order(self.spec)
        self.stop = threading.Event()

    # -- lifecycle --------------------------------------------------------------
    def acquire(self) -> None:
        fd = os.open(self.ws.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = supervisor_identity(self.ws)
            raise SupervisorRunning(f"a supervisor already runs for {self.ws.root} (pid {other.pid if other else '?'})") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(ProcIdentity.of(os.getpid()).as_dict()).encode())
        os.fsync(fd)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def emit(self, kind: str, **fields: Any) -> None:
        """Journal one event (hash-chained, fsynced), or add it to the open ``atomic`` batch."""
        record = {"ts": time.time(), "kind": kind, **fields}
        if self._batch is not None:
            self._batch.append(record)
            return
        self._append([record])

    def _append(self, records: list[dict[str, Any]]) -> None:
        path = self.ws.journal_path
        try:
            append_chained(path, records)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(path)) from None

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Events emitted inside reach the journal as one append, or (on an error) not at all."""
        self._batch = []
        try:
            yield
            batch = self._batch
        finally:
            self._batch = None
        self._append(batch)

    def start(self) -> None:
        """Take the lock, rebuild state from the logs, reconcile jobs."""
        self.acquire()
        self.emit("supervisor_started", **ProcIdentity.of(os.getpid()).as_dict())
        self.state.refresh()
        for a in list(self.state.running()):
            ident = job_handle(a.identity) if a.identity else None
            if ident and ident.alive():
                self.emit("reattached", job_id=a.job_id, stage=a.stage)
            else:
                self._crashed(a.job_id, "process gone while no supervisor watched (no job_finished in its log)")
        for stage, entry in self.spec.stages.items():  # a crash journaled by a supervisor killed before its resume
            st = self.state.stage(stage)
            if will_resume(entry, st) and not st.retry_pending:
                self.emit("queued", stage=stage, reason=f"resume after crash of {st.latest.job_id}")
        self.state.refresh()

    def run_forever(self) -> None:
        """Rounds until SIGTERM. An error in a round (I/O or other) is printed and journaled once
        and the next round tries again; an error outside the rounds (the lock, the first fold)
        stops the supervisor with its reason printed and journaled."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        reason = "stopped by SIGTERM"
        try:
            self.start()
            while not self.stop.is_set():
                try:
                    self.tick()
                    self.flush_reports()
                except OSError as exc:
                    self.report(f"I/O error: {exc}")
                except Exception as exc:  # noqa: BLE001 - one bad round must not stop every job's supervision
                    self.report(f"error in a round, carrying on: {type(exc).__name__}: {exc}")
                self.stop.wait(self.spec.settings.poll_interval_s)
        except BaseException as exc:
            reason = f"stopped by an error: {type(exc).__name__}: {exc}"
            raise
        finally:
            self._say(f"pmat supervise: {reason}")
            try:
                if self._lock_fd is not None:
                    self.emit("supervisor_stopped", reason=reason)
            except OSError:
                pass
            self.release()

    def report(self, message: str) -> None:
        """Print and journal a problem once each; what the failing disk did not take (stderr is a
        file in logs/, the journal too) is printed and journaled once it does, with when it began."""
        if message in self._reported or message in self._pending:
            return
        self._pending[message] = time.time()
        if self._say(f"pmat supervise: {message}"):
            self._printed.add(message)
        self.flush_reports()

    def flush_reports(self) -> None:
        for message, since in list(self._pending.items()):
            try:
                self.emit("supervisor_error", message=message, since=since)
            except OSError:
                return
            del self._pending[message]
            self._reported.add(message)
            if message not in self._printed:
                stamp = time.strftime("%H:%M:%S", time.localtime(since))
                self._say(f"pmat supervise: (since {stamp}) {message}")

    @staticmethod
    def _say(line: str) -> bool:
        try:
            print(line, file=sys.stderr, flush=True)
        except OSError:
            return False  # stderr is a file on the very disk that fails
        return True

    # -- one round --------------------------------------------------------------
    def tick(self) -> None:
        reap_children()
        self._process_commands()
        self.state.refresh()
        self._watch_running()
        self._journal_ends()
        self._retain()
        self._resume_after_disk_full()
        self._report_damage()
        self._schedule()

    def _retain(self) -> None:
        """Remove checkpoints every consumer has finished with (engine/disk.py), journaled."""
        for rec in apply_retention(self.spec, self.ws, self.state):
            self.emit("artifact_removed", **rec)

    def _journal_ends(self) -> None:
        """Copy each job's end from its log into the journal (one append for all), so that a job
        log deleted or truncated later neither loses the outcome nor makes a finished stage run again."""
        ended = [a for a in self.state.jobs.values()
                 if a.outcome in ("ok", "failed", "cancelled") and a.job_id not in self.state.ended_in_journal]
        if ended:
            with self.atomic():
                for a in ended:
                    self.emit("finished", job_id=a.job_id, stage=a.stage, outcome=a.outcome, error=a.error,
                              peak_rss=a.peak_rss)
            self.state.refresh()

    def _report_damage(self) -> None:
        if self.state.chain_break:
            self.report(f"journal chain broken: {self.state.chain_break}; approvals after it do not count")
        if self.state.damage:
            self.report(f"{self.state.bad_events} log line(s) skipped, latest {self.state.damage[-1]}")

    def _crashed(self, job_id: str, reason: str) -> None:
        """Journal a crash and, where the stage allows, its resume: one append."""
        a = self.state.attempt(job_id)
        st = self.state.stage(a.stage)
        free = free_bytes(self.ws.root)
        full = free < DISK_FULL_BELOW
        if full:  # its log could not take job_finished: resumed when space returns, not at once
            reason += f"; No space left on device under {self.ws.root} ({free >> 20} MiB free)"
        with self.atomic():
            self.emit("crashed", job_id=job_id, stage=a.stage, reason=reason)
            if not full and resumable(self.spec.stages.get(a.stage), st):
                self.emit("queued", stage=a.stage, reason=f"resume after crash of {job_id}")
        self.state.refresh()

    def _resume_after_disk_full(self) -> None:
        """A stage that failed for lack of space is queued again once its disk has room."""
        for stage in self.spec.stages:
            st = self.state.stage(stage)
            if st.cancel_requested or not st.requested or not waits_for_space(st, self.ws.root):
                self.disk.forget(stage)
                continue
            said, back = self.disk.look(stage, st, self.ws.root)
            if said:
                self.emit("waiting", stage=stage, reason=said)
            if back:
                self.emit("queued", stage=stage, reason=back)
                self.state.refresh()

    def _watch_running(self) -> None:
        now = time.monotonic()
        for a in self.state.running():
            ident = job_handle(a.identity) if a.identity else None
            if ident is None or ident.alive():
                if ident and (shown := ident.status()) and shown != a.executor_state:
                    self.emit("executor_state", job_id=a.job_id, stage=a.stage, executor=ident.executor, state=shown)
                    self.state.refresh()  # the fold learns it from the journal, like everything else
                deadline = self._kill_deadlines.get(a.job_id)
                if ident and deadline and now > deadline:
                    ident.signal_group(signal.SIGKILL)
                continue
            self.state.refresh()  # the job may have finished between the two reads
            if a.outcome is None and self.state.stage(a.stage).cancel_requested:
                self.emit("cancelled", job_id=a.job_id, stage=a.stage, reason="killed by cancel before it logged its end")
            elif a.outcome is None:
                end = ident.end_reason() if ident else None
                self._crashed(a.job_id, "process exited without job_finished (killed or crashed)" + (f"; {end}" if end else ""))
            self._kill_deadlines.pop(a.job_id, None)

    # -- admission ----------------------------------------------------------------
    def need_bytes(self, stage: str) -> int:
        """max(spec estimate, stage's own estimate, peak learned from earlier runs)."""
        entry = self.spec.stages[stage]
        need = int(entry.memory_gb * GIB)
        try:
            module = load_stage(entry.kind)
            inputs = {k: Path(self.resolve(v)) for k, v in entry.inputs.items()}
            if all(p.exists() for p in inputs.values() if not str(p).startswith("package:")):
                params = resolve_params(self.spec, self.ws, dict(entry.params), self.ws.spec_path.parent)
                need = max(need, int(module.memory_estimate(module.Params(**params), inputs)))
        except Exception as exc:  # noqa: BLE001 - an estimate that fails falls back to the spec's
            print(f"memory estimate of {stage} failed: {exc}", file=sys.stderr)
        learned = [a.peak_rss for a in self.state.stage(stage).attempts if a.outcome == "ok"]
        return max([need, *learned])

    def headroom(self) -> int:
        s = self.spec.settings
        running = [(a.reservation, a.rss + (a.gpu or 0)) for a in self.state.running()]  # host + device bytes in use
        budget = int(s.memory_budget_gb * GIB) if s.memory_budget_gb else None
        avail = current_pool().available  # GPU and host separately on a discrete GPU, the shared pool on unified
        return admission_headroom(avail, running, int(s.memory_margin_gb * GIB), budget)

    def resolve(self, ref: str) -> str:
        return resolve_ref(self.spec, self.ws, ref, self.ws.spec_path.parent)

    def approved(self, stage: str, verdicts: Verdicts | None = None) -> bool:
        return approval_current(self.spec, self.ws, stage, self.state.approvals.get(stage), verdicts)

    def _schedule(self) -> None:
        verdicts = round_verdicts(self.spec, self.ws)  # the gates are evaluated once a round, if at all
        for stage in self._order:
            st = self.state.stage(stage)
            if not st.requested or st.status not in ("queued", "pending"):
                continue
            need = headroom = None
            if all(self.state.stage(d).done for d in self.spec.deps(stage)):
                need, headroom = self.need_bytes(stage), self.headroom()
            b = why_not_running(self.spec, self.state, stage, approved=self.approved(stage, verdicts), need=need, headroom=headroom)
            if b.kind == "queued" and b.text == "ready":
                if time.monotonic() - self._inputs_checked.get(stage, -RECHECK_INPUTS_S) < RECHECK_INPUTS_S:
                    continue
                problem = stage_input_problem(self.spec, self.ws, stage)
                if problem:  # held back, not failed: it starts once the input is fixed
                    self._inputs_checked[stage] = time.monotonic()
                    self._wait(stage, BAD_INPUT + problem)
                    continue
                if (full := disk_wait_reason(self.spec, self.ws, self.state, stage)) is not None:
                    self._wait(stage, full)  # its outputs would not fit: it waits, and says why
                    continue
                entry = self.spec.stages[stage]
                gpus = admit_gpus(entry, entry.executor or self.spec.settings.executor, self.state.running(),
                                  need or 0, int(self.spec.settings.memory_margin_gb * GIB))
                if isinstance(gpus, str):  # fewer GPUs with room than it asks for
                    self._wait(stage, gpus)
                    continue
                self.launch(stage, need or 0, gpus)
                self.state.refresh()
            elif b.kind in ("waiting_on", "needs_approval", "memory", "failed_dependency"):
                self._wait(stage, b.text)

    def _wait(self, stage: str, reason: str) -> None:
        """Journal why a stage waits when the reason changed; the fold learns it from the journal."""
        if self.state.stage(stage).waiting != reason:
            self.emit("waiting", stage=stage, reason=reason)
            self.state.refresh()

    def launch(self, stage: str, reservation: int, gpus: list[int] | None = None) -> str | None:
        """Start the stage's next attempt, or None when a process of that very attempt still runs
        (a supervisor killed between spawning it and journaling 'launched'): each job holds an
        flock on ``jobs/<job_id>.lock`` from before it exists, inherited from the supervisor."""
        attempt = len(self.state.stage(stage).attempts) + 1
        job_id = f"{stage}.{attempt}"
        lock = os.open(self.ws.job_file(job_id).with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # its job_started shows it as running soon
            return self._spawn(stage, job_id, attempt, reservation, lock, gpus or [])
        finally:
            os.close(lock)

    def _spawn(self, stage: str, job_id: str, attempt: int, reservation: int, lock: int, gpus: list[int]) -> str:
        entry = self.spec.stages[stage]
        module = load_stage(entry.kind)
        params = resolve_params(self.spec, self.ws, dict(entry.params), self.ws.spec_path.parent)
        job = JobSpec(
            job_id=job_id,
            stage=stage,
            kind=entry.kind,
            attempt=attempt,
            workspace=str(self.ws.root),
            params=params,
            inputs={k: self.resolve(v) for k, v in entry.inputs.items()},
            params_hash=params_hash(params),
            outputs=list(getattr(module, "OUTPUTS", {})),
            device=entry.device,
            seed=entry.seed,
            gpus=entry.gpus or 1,
        )
        job.save(self.ws.job_file(job_id))
        self.emit("admitted", stage=stage, job_id=job_id, reservation=reservation)
        argv = job_argv(self.ws.job_file(job_id), entry.kind, job.gpus)
        ident = launch_job(self.spec, stage, job_id, argv, ws=self.ws, reservation=reservation, gpus=gpus, keep_fds=(lock,))
        try:
            self.emit("launched", stage=stage, job_id=job_id, attempt=attempt, identity={**ident.as_dict(), "gpus": gpus},
                      reservation=reservation)
        except OSError:
            ident.signal_group(signal.SIGKILL)  # not journaled, not ours: its log shows a crash, resumed later
            raise
        return job_id
