"""The supervisor's command inbox, both ends: the typed commands, the client side (send a
command, find the workspace's supervisor, start one detached) and the read side.

A command is a JSON file in the owner-only ``commands/`` folder; each command's name and
argument keys are spelled once, in its dataclass below, which both the senders (``pmat``, the
console) and the supervisor (``parse_command``) use. A command counts only from a regular file
owned by the workspace's owner and writable by nobody else, and its sender is that owner (a
name in the file's content proves nothing).
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import sys
import time
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from engine.procs import ProcIdentity, spawn_detached
from engine.workspace import Workspace, atomic_write_json

MAX_COMMAND_BYTES = 1 << 20


# -- the commands -----------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """Base of the typed commands: ``NAME`` is the word in the file, the fields its ``args``."""

    NAME: ClassVar[str] = ""

    def args(self) -> dict[str, Any]:
        """The command's ``args`` mapping: fields that differ from their defaults."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def aimed(cls, target: str, **extra: Any) -> Command:
        """The command for one target (the console's actions name one stage or job)."""
        return cls(target, **extra)  # type: ignore[call-arg]


@dataclass(frozen=True)
class Run(Command):
    """Queue stages (names, work item ids or 'all') with their upstream."""

    NAME: ClassVar[str] = "run"
    targets: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(str(t) for t in self.targets))

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Run:
        return cls(tuple(args.get("targets") or ()))

    @classmethod
    def aimed(cls, target: str, **extra: Any) -> Run:
        return cls((target,), **extra)


@dataclass(frozen=True)
class Approve(Command):
    """Approve a gated stage, or every stage a criterion gates, on the evidence shown."""

    NAME: ClassVar[str] = "approve"
    target: str
    evidence: dict[str, Any] | None = None  # what the approver saw; refused when it changed since
    note: str = ""
    override: str | None = None  # the reason to approve a gate that does not pass

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Approve:
        return cls(str(args.get("target")), args.get("evidence"), args.get("note", ""),
                   str(args.get("override") or "").strip() or None)


@dataclass(frozen=True)
class _JobCommand(Command):
    """A command on one job, named by its id or by its stage (the stage's latest job)."""

    job: str

    @classmethod
    def parse(cls, args: dict[str, Any]) -> _JobCommand:
        return cls(str(args.get("job")))


@dataclass(frozen=True)
class Cancel(_JobCommand):
    """Stop a stage's running job and unqueue the stage."""

    NAME: ClassVar[str] = "cancel"


@dataclass(frozen=True)
class Retry(_JobCommand):
    """Queue a failed, crashed or cancelled stage again."""

    NAME: ClassVar[str] = "retry"


COMMANDS: dict[str, type[Run] | type[Approve] | type[Cancel] | type[Retry]] = {
    c.NAME: c for c in (Run, Approve, Cancel, Retry)}


def parse_command(record: dict[str, Any]) -> Run | Approve | Cancel | Retry | str:
    """The typed command of an inbox record, or why it is refused. Malformed argument values
    raise TypeError/ValueError/AttributeError (the supervisor rejects the command with them)."""
    cls = COMMANDS.get(str(record.get("command")))
    if cls is None:
        return f"unknown command {record.get('command')!r}"
    args = record.get("args") or {}
    if not isinstance(args, dict):
        return f"command args must be a mapping, got {type(args).__name__}"
    return cls.parse(args)


# -- the client side ----------------------------------------------------------------
def send_command(ws: Workspace, command: Command) -> str:
    """Drop a command into the workspace inbox; returns its id."""
    cid = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    record = {"id": cid, "command": command.NAME, "args": command.args(), "ts": time.time()}  # the sender is the file's owner
    atomic_write_json(ws.commands_dir / f"{cid}.json", record)
    return cid


def queued_commands(ws: Workspace) -> list[Run | Approve | Cancel | Retry]:
    """The well-formed commands still in the inbox (the supervisor has not taken them yet)."""
    out = []
    try:
        files = sorted(ws.commands_dir.glob("*.json"))
    except OSError:
        return out
    for path in files:
        try:
            record = json.loads(path.read_text())
            cmd = parse_command(record) if isinstance(record, dict) else "not a mapping"
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        if not isinstance(cmd, str):
            out.append(cmd)
    return out


def supervisor_identity(ws: Workspace) -> ProcIdentity | None:
    """The live supervisor of a workspace, if any."""
    try:
        ident = ProcIdentity.from_dict(json.loads(ws.lock_path.read_text()))
    except (OSError, ValueError, KeyError):
        return None
    return ident if ident.alive() else None


def restart_hint(ws: Workspace) -> str:
    return f"restart it with `pmat supervise --detach -w {ws.root}`"


def supervisor_down(ws: Workspace) -> str | None:
    """None while the workspace's supervisor runs; else one line saying since when it is
    gone, why (its last journaled reason or the last line it printed) and how to restart it.
    For ``pmat demo`` and the console, which must notice a dead supervisor at once."""
    if supervisor_identity(ws) is not None:
        return None
    reason = _last_stop_reason(ws)
    return f"supervisor of {ws.root} is not running{f' ({reason})' if reason else ''}; {restart_hint(ws)}"


def _last_stop_reason(ws: Workspace) -> str | None:
    try:
        with open(ws.logs_dir / "supervisor.out", "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 4096))
            tail = [ln.strip() for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        tail = []
    return tail[-1][:300] if tail else None


def start_supervisor_detached(ws: Workspace) -> ProcIdentity:
    """Start ``pmat supervise`` for a workspace in its own session."""
    argv = [sys.executable, "-m", "engine.cli.main", "supervise", "--workspace", str(ws.root)]
    return spawn_detached(argv, log_path=ws.logs_dir / "supervisor.out", cwd=ws.root)


# -- the read side --------------------------------------------------------------------
def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def read_command(path: Path, owner: int) -> tuple[dict[str, Any], str, str | None]:
    """(command, who sent it, why it is refused). Only a regular file owned by the workspace's
    owner and writable by nobody else counts; the sender is that owner, whatever the file says."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return {}, "?", f"{path}: cannot open: {exc.strerror}"
    try:
        st = os.fstat(fd)
        by = _user_name(st.st_uid)
        if not stat.S_ISREG(st.st_mode):
            return {}, by, f"{path}: not a regular file"
        if st.st_uid != owner:
            return {}, by, f"{path}: owned by {by}, not by the workspace owner {_user_name(owner)}"
        if st.st_mode & 0o022:
            return {}, by, f"{path}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
        try:
            cmd = json.loads(os.read(fd, MAX_COMMAND_BYTES))
        except ValueError as exc:
            return {}, by, f"{path}: unreadable command file: {exc}"
    finally:
        os.close(fd)
    if not isinstance(cmd, dict):
        return {}, by, f"{path}: expected a JSON object"
    return cmd, by, None
