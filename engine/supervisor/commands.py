"""The supervisor's side of the ``commands/`` inbox: run, approve, cancel and retry.

A command's effects and its ``command_applied`` (or ``command_rejected``) are one journal
append, and its file is removed only after it: a kill at any instant leaves either nothing
(the command runs after a restart) or all. A mixin of the Supervisor (``core.py``), so the
commands act on the very state, journal and kill deadlines its rounds use.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from engine.approvals import approval_seal, check_approvable
from engine.dag import expand_targets
from engine.executors import job_handle
from engine.inbox import Approve, Cancel, Retry, Run, parse_command, read_command
from engine.spec import PipelineSpec
from engine.state import PipelineState
from engine.workspace import Workspace


class InboxCommands:
    """The command handling of the Supervisor, which provides what is declared here."""

    ws: Workspace
    spec: PipelineSpec
    state: PipelineState
    _order: list[str]
    _batch: list[dict[str, Any]] | None
    _kill_deadlines: dict[str, float]
    emit: Callable[..., None]
    atomic: Callable[[], AbstractContextManager[None]]
    report: Callable[[str], None]

    def _process_commands(self) -> None:
        """Execute each new command file; its effects and verdict are one journal append, and
        the file is removed only after it (a restart runs a command received but not applied)."""
        try:
            names = sorted(n for n in os.listdir(self.ws.commands_dir) if n.endswith(".json") and not n.startswith("."))
        except FileNotFoundError:
            return
        for name in names:
            path = self.ws.commands_dir / name
            cmd, by, error = read_command(path, os.stat(self.ws.root).st_uid)
            cid = str(cmd.get("id") or path.stem)
            if cid not in self.state.processed_commands:
                with self.atomic():
                    if cid not in self.state.received_commands:
                        self.emit("command_received", id=cid, command=cmd.get("command"), args=cmd.get("args"), by=by)
                    mark = len(self._batch or [])
                    try:
                        error = error or self._execute(cmd, by)
                    except (TypeError, ValueError, KeyError, AttributeError) as exc:
                        del (self._batch or [])[mark:]  # nothing of a malformed command is applied
                        error = f"malformed command: {type(exc).__name__}: {exc}"
                    if error:
                        self.emit("command_rejected", id=cid, reason=error)
                    else:
                        self.emit("command_applied", id=cid)
                self.state.refresh()
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # a directory or an immutable file in the inbox must not stop the rounds
                self.report(f"cannot remove command file {path}: {exc.strerror}")

    def _execute(self, record: dict[str, Any], by: str) -> str | None:
        cmd = parse_command(record)
        if isinstance(cmd, str):
            return cmd
        if isinstance(cmd, Run):
            return self._cmd_run(cmd, by)
        if isinstance(cmd, Approve):
            return self._cmd_approve(cmd, by)
        if isinstance(cmd, Cancel):
            return self._cmd_cancel(cmd, by)
        return self._cmd_retry(cmd, by)

    def expand_targets(self, targets: list[str]) -> list[str] | str:
        """Stages named by stage names, work item ids or 'all', with their upstream, in DAG order."""
        closure = expand_targets(self.spec, [str(t) for t in targets])
        if isinstance(closure, str):
            return f"unknown stage or work item {closure!r}"
        return [s for s in self._order if s in closure]

    def _cmd_run(self, cmd: Run, by: str) -> str | None:
        stages = self.expand_targets(list(cmd.targets))
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
            return self.spec.gated_by(target) or f"no gated stage depends on {target}"
        return f"unknown stage or criterion {target!r}"

    def _cmd_approve(self, cmd: Approve, by: str) -> str | None:
        stages = self._approval_targets(cmd.target)
        if isinstance(stages, str):
            return stages
        override = cmd.override
        granted = []
        for s in stages:  # engine.approvals decides: a gate that does not pass needs an override
            current, refusal = check_approvable(self.spec, self.ws, s, override)
            if refusal:
                return refusal
            if cmd.evidence is not None and cmd.evidence != current:
                return f"evidence for {s} changed since it was shown; review it again"
            granted.append((s, current))
        for s, current in granted:
            self.emit("approval_granted", target=s, by=by, evidence=current, note=cmd.note, override=override,
                      seal=approval_seal(s, by, current, override))
        return None

    def _cmd_cancel(self, cmd: Cancel, by: str) -> str | None:
        target = cmd.job
        stage = target if target in self.spec.stages else target.rpartition(".")[0]
        if stage not in self.spec.stages:
            return f"unknown job or stage {target!r}"
        self.emit("cancel_requested", stage=stage, by=by)
        self.emit("unrequested", stage=stage)
        job_id = self.state.job_of(target)
        a = self.state.jobs.get(job_id) if job_id else None
        if a and a.running and a.identity:
            job_handle(a.identity).signal_group(signal.SIGTERM)
            self._kill_deadlines[a.job_id] = time.monotonic() + self.spec.settings.cancel_grace_s
        return None

    def _cmd_retry(self, cmd: Retry, by: str) -> str | None:
        target = cmd.job
        stage = target if target in self.spec.stages else target.rpartition(".")[0]
        st = self.state.stages.get(stage)
        if stage not in self.spec.stages or st is None or st.latest is None:
            return f"nothing to retry for {target!r}"
        if st.retry_pending:
            return None  # already queued (a replayed command)
        if st.status not in ("failed", "crashed", "cancelled"):
            return f"{stage} is {st.status}; only failed, crashed or cancelled jobs are retried"
        self.emit("queued", stage=stage, reason=f"retry requested by {by}")
        return None
