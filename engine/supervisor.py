"""The supervisor: one per workspace; queues, admits, launches and reaps jobs.

It owns nothing the logs do not hold. On start it folds the journal and job
logs, re-attaches to jobs that are still alive (by pid + start ticks + boot id),
reports the ones that died without ``job_finished`` as crashed and resumes them
when their stage allows. Commands (run, approve, cancel, retry) arrive as files
in the owner-only ``commands/`` inbox and are journaled as they are executed.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from engine.approvals import approval_current, stage_evidence
from engine.dag import topo_order, why_not_running
from engine.events import EventWriter
from engine.memory import GIB, admission_headroom, meminfo
from engine.procs import ProcIdentity, reap_children, spawn_detached
from engine.refs import resolve_params, resolve_ref
from engine.spec import PipelineSpec, load_spec
from engine.stages.base import JobSpec, load_stage
from engine.stages.run import params_hash
from engine.state import PipelineState
from engine.workspace import Workspace, atomic_write_json


class SupervisorRunning(RuntimeError):
    """Another supervisor holds this workspace's lock."""


# -- the command inbox (client side) ----------------------------------------------
def send_command(ws: Workspace, command: str, **args: Any) -> str:
    """Drop a command into the workspace inbox; returns its id."""
    cid = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    record = {"id": cid, "command": command, "args": args, "by": os.environ.get("USER") or str(os.getuid()), "ts": time.time()}
    atomic_write_json(ws.commands_dir / f"{cid}.json", record)
    return cid


def supervisor_identity(ws: Workspace) -> ProcIdentity | None:
    """The live supervisor of a workspace, if any."""
    try:
        ident = ProcIdentity.from_dict(json.loads(ws.lock_path.read_text()))
    except (OSError, ValueError, KeyError):
        return None
    return ident if ident.alive() else None


def start_supervisor_detached(ws: Workspace) -> ProcIdentity:
    """Start ``pmat supervise`` for a workspace in its own session."""
    argv = [sys.executable, "-m", "engine.cli.main", "supervise", "--workspace", str(ws.root)]
    return spawn_detached(argv, log_path=ws.logs_dir / "supervisor.out", cwd=ws.root)


# -- the daemon --------------------------------------------------------------------
class Supervisor:
    def __init__(self, ws: Workspace, spec: PipelineSpec | None = None) -> None:
        self.ws = ws.init()
        self.spec = spec or load_spec(ws.spec_path)
        self.state = PipelineState(ws)
        self.journal: EventWriter | None = None
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
        self.journal = EventWriter(self.ws.journal_path, fsync=True)

    def release(self) -> None:
        if self.journal:
            self.journal.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def emit(self, kind: str, **fields: Any) -> None:
        assert self.journal is not None
        self.journal.emit(kind, **fields)

    def start(self) -> None:
        """Take the lock, rebuild state from the logs, reconcile jobs."""
        self.acquire()
        self.emit("supervisor_started", **ProcIdentity.of(os.getpid()).as_dict())
        self.state.refresh()
        for a in list(self.state.running()):
            ident = ProcIdentity.from_dict(a.identity) if a.identity else None
            if ident and ident.alive():
                self.emit("reattached", job_id=a.job_id, stage=a.stage)
            else:
                self._crashed(a.job_id, "process gone while no supervisor watched (no job_finished in its log)")
        self.state.refresh()

    def run_forever(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.start()
        try:
            while not self.stop.is_set():
                self.tick()
                self.stop.wait(self.spec.settings.poll_interval_s)
        finally:
            self.release()

    # -- one round --------------------------------------------------------------
    def tick(self) -> None:
        reap_children()
        self._process_commands()
        self.state.refresh()
        self._watch_running()
        self._schedule()

    def _crashed(self, job_id: str, reason: str) -> None:
        a = self.state.attempt(job_id)
        self.emit("crashed", job_id=job_id, stage=a.stage, reason=reason)
        self.state.refresh()
        entry = self.spec.stages.get(a.stage)
        st = self.state.stage(a.stage)
        if entry and entry.resume and len(st.attempts) < entry.max_attempts and not st.cancel_requested:
            self.emit("queued", stage=a.stage, reason=f"resume after crash of {job_id}")

    def _watch_running(self) -> None:
        now = time.monotonic()
        for a in self.state.running():
            ident = ProcIdentity.from_dict(a.identity) if a.identity else None
            if ident is None or ident.alive():
                deadline = self._kill_deadlines.get(a.job_id)
                if ident and deadline and now > deadline:
                    ident.signal_group(signal.SIGKILL)
                continue
            self.state.refresh()  # the job may have finished between the two reads
            if a.outcome is None and self.state.stage(a.stage).cancel_requested:
                self.emit("cancelled", job_id=a.job_id, stage=a.stage, reason="killed by cancel before it logged its end")
            elif a.outcome is None:
                self._crashed(a.job_id, "process exited without job_finished (killed or crashed)")
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
        running = [(a.reservation, a.rss) for a in self.state.running()]
        budget = int(s.memory_budget_gb * GIB) if s.memory_budget_gb else None
        avail = meminfo().get("MemAvailable", 0)
        return admission_headroom(avail, running, int(s.memory_margin_gb * GIB), budget)

    def resolve(self, ref: str) -> str:
        return resolve_ref(self.spec, self.ws, ref, self.ws.spec_path.parent)

    def approved(self, stage: str) -> bool:
        return approval_current(self.spec, self.ws, stage, self.state.approvals.get(stage))

    def _schedule(self) -> None:
        for stage in self._order:
            st = self.state.stage(stage)
            if not st.requested or st.status not in ("queued", "pending"):
                continue
            need = headroom = None
            if all(self.state.stage(d).done for d in self.spec.deps(stage)):
                need, headroom = self.need_bytes(stage), self.headroom()
            b = why_not_running(self.spec, self.state, stage, approved=self.approved(stage), need=need, headroom=headroom)
            if b.kind == "queued" and b.text == "ready":
                self.launch(stage, need or 0)
                self.state.refresh()
            elif b.kind in ("waiting_on", "needs_approval", "memory", "failed_dependency") and st.waiting != b.text:
                self.emit("waiting", stage=stage, reason=b.text)
                st.waiting = b.text

    def launch(self, stage: str, reservation: int) -> str:
        entry = self.spec.stages[stage]
        attempt = len(self.state.stage(stage).attempts) + 1
        job_id = f"{stage}.{attempt}"
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
        )
        job.save(self.ws.job_file(job_id))
        self.emit("admitted", stage=stage, job_id=job_id, reservation=reservation)
        argv = [sys.executable, "-m", "engine.stages.run", str(self.ws.job_file(job_id))]
        ident = spawn_detached(argv, log_path=self.ws.logs_dir / "jobs" / f"{job_id}.out", cwd=self.ws.root)
        self.emit("launched", stage=stage, job_id=job_id, attempt=attempt, identity=ident.as_dict(), reservation=reservation)
        return job_id

    # -- commands -----------------------------------------------------------------
    def _process_commands(self) -> None:
        try:
            names = sorted(n for n in os.listdir(self.ws.commands_dir) if n.endswith(".json") and not n.startswith("."))
        except FileNotFoundError:
            return
        for name in names:
            path = self.ws.commands_dir / name
            try:
                cmd = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                self.emit("command_rejected", id=name, reason=f"unreadable command file: {exc}")
                path.unlink(missing_ok=True)
                continue
            if cmd.get("id") not in self.state.processed_commands:
                self.emit("command_received", id=cmd.get("id"), command=cmd.get("command"), args=cmd.get("args"), by=cmd.get("by"))
                error = self._execute(cmd)
                if error:
                    self.emit("command_rejected", id=cmd.get("id"), reason=error)
                self.state.refresh()
            path.unlink(missing_ok=True)

    def _execute(self, cmd: dict[str, Any]) -> str | None:
        args = cmd.get("args") or {}
        handler = {"run": self._cmd_run, "approve": self._cmd_approve, "cancel": self._cmd_cancel, "retry": self._cmd_retry}.get(cmd.get("command", ""))
        if handler is None:
            return f"unknown command {cmd.get('command')!r}"
        return handler(args, cmd.get("by", "?"))

    def expand_targets(self, targets: list[str]) -> list[str] | str:
        """Stages named by stage names, work item ids or 'all', with their upstream."""
        chosen: list[str] = []
        for t in targets:
            if t == "all":
                chosen.extend(self.spec.stages)
            elif t in self.spec.stages:
                chosen.append(t)
            elif t in self.spec.work_items:
                chosen.extend(self.spec.stages_of(t))
            else:
                return f"unknown stage or work item {t!r}"
        closure: set[str] = set()
        todo = list(chosen)
        while todo:
            s = todo.pop()
            if s not in closure:
                closure.add(s)
                todo.extend(self.spec.deps(s))
        return [s for s in self._order if s in closure]

    def _cmd_run(self, args: dict[str, Any], by: str) -> str | None:
        stages = self.expand_targets(list(args.get("targets") or []))
        if isinstance(stages, str):
            return stages
        for s in stages:
            st = self.state.stage(s)
            if not st.requested and st.status in ("pending", "queued"):
                self.emit("queued", stage=s, reason=f"requested by {by}")
        return None

    def _approval_targets(self, target: str) -> list[str] | str:
        if target in self.spec.stages:
            return [target]
        if target in self.spec.acceptance:
            gated = [s for s, e in self.spec.stages.items() if e.approval == "required"
                     and e.work_item and target in self.spec.work_items[e.work_item].acceptance]
            return gated or f"no gated stage depends on {target}"
        return f"unknown stage or criterion {target!r}"

    def _cmd_approve(self, args: dict[str, Any], by: str) -> str | None:
        stages = self._approval_targets(str(args.get("target")))
        if isinstance(stages, str):
            return stages
        for s in stages:
            if self.spec.stages[s].approval != "required":
                return f"stage {s} needs no approval"
            current = stage_evidence(self.spec, self.ws, s)
            seen = args.get("evidence")
            if seen is not None and seen != current:
                return f"evidence for {s} changed since it was shown; review it again"
            self.emit("approval_granted", target=s, by=by, evidence=current, note=args.get("note", ""))
        return None

    def _job_of(self, target: str) -> str | None:
        if target in self.state.jobs:
            return target
        st = self.state.stages.get(target)
        return st.latest.job_id if st and st.latest else None

    def _cmd_cancel(self, args: dict[str, Any], by: str) -> str | None:
        target = str(args.get("job"))
        stage = target if target in self.spec.stages else target.rpartition(".")[0]
        if stage not in self.spec.stages:
            return f"unknown job or stage {target!r}"
        self.emit("cancel_requested", stage=stage, by=by)
        self.emit("unrequested", stage=stage)
        job_id = self._job_of(target)
        a = self.state.jobs.get(job_id) if job_id else None
        if a and a.running and a.identity:
            ProcIdentity.from_dict(a.identity).signal_group(signal.SIGTERM)
            self._kill_deadlines[a.job_id] = time.monotonic() + self.spec.settings.cancel_grace_s
        return None

    def _cmd_retry(self, args: dict[str, Any], by: str) -> str | None:
        target = str(args.get("job"))
        stage = target if target in self.spec.stages else target.rpartition(".")[0]
        st = self.state.stages.get(stage)
        if stage not in self.spec.stages or st is None or st.latest is None:
            return f"nothing to retry for {target!r}"
        if st.status not in ("failed", "crashed", "cancelled"):
            return f"{stage} is {st.status}; only failed, crashed or cancelled jobs are retried"
        self.emit("queued", stage=stage, reason=f"retry requested by {by}")
        return None
