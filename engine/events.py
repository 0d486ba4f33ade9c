"""Structured JSONL event logs: the single source of truth (DESIGN principle 1).

One writer per file appends whole lines with a single ``write()``; readers resume
from a byte offset, hold back a partial last line, and notice truncation and
rotation (the file shrank or its inode changed).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Event kinds written by jobs (DESIGN.md, "Events").
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
    "cancel_requested",
    "unrequested",
    "approval_granted",
    "approval_revoked",
    "command_received",
    "command_rejected",
)

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
        """Write one event as one line with one ``write()`` call and return it."""
        record = {"ts": time.time(), "kind": kind, **fields}
        os.write(self._fd, _dumps(record))
        if self._fsync or kind in ("job_started", "job_finished", "artifact", "checkpoint"):
            os.fsync(self._fd)
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
    resets: int = 0
    bad_lines: int = 0
    _chunk: int = field(default=1 << 20, repr=False)

    def _check_rotation(self, st: os.stat_result) -> None:
        if (self.inode is not None and st.st_ino != self.inode) or st.st_size < self.offset:
            self.offset = 0
            self.resets += 1
        self.inode = st.st_ino

    def poll_lines(self) -> Iterator[bytes]:
        """Yield complete raw lines (without newline) past the current offset."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        self._check_rotation(st)
        if st.st_size == self.offset:
            return
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
                complete = block[:end]
                self.offset += end + 1  # block starts at the old offset
                yield from complete.split(b"\n")
            # carry (a partial line) is left for the next poll

    def poll(self) -> list[dict[str, Any]]:
        """Return the new complete events as dicts."""
        out = []
        loads = json.loads
        for line in self.poll_lines():
            if not line:
                continue
            try:
                rec = loads(line)
            except ValueError:
                self.bad_lines += 1
                continue
            if isinstance(rec, dict):
                out.append(rec)
            else:
                self.bad_lines += 1
        return out


def read_events(path: Path) -> list[dict[str, Any]]:
    """All complete events of a file (partial last line skipped)."""
    return EventReader(Path(path)).poll()
