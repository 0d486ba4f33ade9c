"""Structured JSONL event logs: the single source of truth (docs/ARCHITECTURE.md, principle 2).

One writer per file appends whole lines with a single ``write()``; readers resume
from a byte offset, hold back a partial last line (``engine.jsonl``'s policy), and
notice truncation and rotation (the file shrank or its inode changed).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.jsonl import parse

# Event kinds written by jobs (docs/FAULTS.md says how the fold checks them).
JOB_KINDS = (
    "job_started",
    "progress",
    "metric",
    "checkpoint",
    "artifact",
    "resource",
    "warning",
    "job_finished",
)
# Event kinds written by the supervisor's journal.
JOURNAL_KINDS = (
    "supervisor_started",
    "queued",
    "waiting",
    "admitted",
    "launched",
    "reattached",
    "crashed",
    "cancelled",
    "finished",
    "cancel_requested",
    "unrequested",
    "approval_granted",
    "approval_revoked",
    "command_received",
    "command_applied",
    "command_rejected",
    "supervisor_error",
    "supervisor_stopped",
)

# The schema of each event kind: required fields and their types. A field named in
# FIELD_TYPES is checked wherever it appears. A line that fails is counted and skipped by
# the fold (with its file and line), so a hand-edited or damaged log never crashes a reader.
_NUM = (int, float)
_STR_OR_NONE = (str, type(None))
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "ts": _NUM, "stage": (str,), "job_id": (str,), "id": (str,), "target": (str,), "name": (str,),
    "reason": _STR_OR_NONE, "message": _STR_OR_NONE, "error": _STR_OR_NONE, "outcome": (str,),
    "identity": (dict, type(None)), "params": (dict,), "reservation": (int,), "attempt": (int,),
    "done": _NUM, "total": (*_NUM, type(None)), "unit": (str,), "value": (*_NUM, type(None)),
    "step": (int, type(None)), "rss": (int,), "peak_rss": (int, type(None)), "gpu": (int, type(None)),
    "pid": (int,), "start_ticks": (int,), "since": _NUM, "boot_id": (str,), "evidence": (dict, type(None)),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "supervisor_started": ("pid", "start_ticks", "boot_id"),
    "queued": ("stage",), "waiting": ("stage",), "admitted": ("stage", "job_id"),
    "launched": ("stage", "job_id", "identity"), "reattached": ("job_id",),
    "crashed": ("job_id",), "cancelled": ("job_id",), "finished": ("job_id", "outcome"), "cancel_requested": ("stage",), "unrequested": ("stage",),
    "approval_granted": ("target",), "approval_revoked": ("target",),
    "command_received": ("id",), "command_applied": ("id",), "command_rejected": ("id",),
    "supervisor_error": ("message",), "supervisor_stopped": ("reason",),
    "job_started": (), "progress": ("done",), "metric": ("name",), "checkpoint": (),
    "artifact": ("name",), "resource": (), "warning": (), "job_finished": ("outcome",),
}
_OUTCOMES = ("ok", "failed", "cancelled")
_IDENTITY = ("pid", "start_ticks", "boot_id")


def _is(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def invalid(ev: Any) -> str | None:
    """Why an event breaks its kind's schema, or None when it is valid. Unknown kinds are
    valid (a newer writer's events are skipped by the fold, not refused)."""
    if not isinstance(ev, dict):
        return "not a JSON object"
    kind = ev.get("kind")
    if not isinstance(kind, str):
        return "no 'kind'"
    if not _is(ev.get("ts"), _NUM):
        return f"{kind}: 'ts' missing or not a number"
    for key in REQUIRED.get(kind, ()):
        if key not in ev:
            return f"{kind}: required field {key!r} is missing"
    for key, value in ev.items():
        types = FIELD_TYPES.get(key)
        if types is not None and not _is(value, types):
            return f"{kind}: field {key!r} has type {type(value).__name__}"
    if "job_id" in ev and not job_id_ok(ev["job_id"]):
        return f"{kind}: job_id {ev['job_id']!r} is not STAGE.ATTEMPT"
    if kind == "launched" and ev["identity"] is not None and ev["identity"].get("executor", "local") == "local" and not all(_is(ev["identity"].get(k), FIELD_TYPES[k]) for k in _IDENTITY):
        return "launched: identity needs pid, start_ticks and boot_id"
    if kind in ("job_finished", "finished") and ev["outcome"] not in _OUTCOMES:
        return f"{kind}: outcome {ev['outcome']!r} is not one of {', '.join(_OUTCOMES)}"
    return None


def job_id_ok(job_id: str) -> bool:
    """``STAGE.ATTEMPT``: what a job id and a job log's name must look like."""
    stage, dot, n = job_id.rpartition(".")
    return bool(stage and dot and n.isdigit())

FILE_MODE = 0o600


def _dumps(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()


class EventWriter:
    """Appends events to one JSONL file; one instance per file (one writer)."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        self._fsync = fsync

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Write one event as one line with one ``write()`` call and return it. An I/O error
        (disk full, read-only) is raised naming the log, not as a bare errno."""
        record = {"ts": time.time(), "kind": kind, **fields}
        try:
            os.write(self._fd, _dumps(record))
            if self._fsync or kind in ("job_started", "job_finished", "artifact", "checkpoint"):
                os.fsync(self._fd)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        return record

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class EventReader:
    """Incremental reader of one JSONL file.

    ``poll()`` returns the complete new lines since the last call. A partial last
    line stays unread until its newline arrives. If the file shrank or was
    replaced (new inode), reading restarts at 0 and ``resets`` counts it.
    Lines that are not valid JSON objects are counted in ``bad_lines`` and skipped.
    """

    path: Path
    offset: int = 0
    inode: int | None = None
    line: int = 0  # 1-based number of the last line returned (for "FILE:LINE" reports)
    resets: int = 0
    bad_lines: int = 0
    _chunk: int = field(default=1 << 20, repr=False)

    def _check_rotation(self, st: os.stat_result) -> None:
        if (self.inode is not None and st.st_ino != self.inode) or st.st_size < self.offset:
            self.offset = self.line = 0
            self.resets += 1
        self.inode = st.st_ino

    def poll_lines(self) -> Iterator[bytes]:
        """The complete raw lines (without newline) past the current offset. The rotation check
        runs at once, so ``line + 1`` read right after this call numbers the first line yielded."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return iter(())
        self._check_rotation(st)
        if st.st_size == self.offset:
            return iter(())
        return self._read_lines()

    def _read_lines(self) -> Iterator[bytes]:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            carry = b""
            while True:
                block = fh.read(self._chunk)
                if not block:
                    break
                block = carry + block
                end = block.rfind(b"\n")
                if end < 0:
                    carry = block
                    continue
                carry = block[end + 1 :]
                lines = block[:end].split(b"\n")
                self.offset += end + 1  # block starts at the old offset
                self.line += len(lines)
                yield from lines
            # carry (a partial line) is left for the next poll

    def poll(self) -> list[dict[str, Any]]:
        """Return the new complete events as dicts."""
        out = []
        for line in self.poll_lines():
            if not line:
                continue
            rec = parse(line)
            if isinstance(rec, dict):
                out.append(rec)
            else:
                self.bad_lines += 1
        return out


def read_events(path: Path) -> list[dict[str, Any]]:
    """All complete events of a file (partial last line skipped)."""
    return EventReader(Path(path)).poll()
