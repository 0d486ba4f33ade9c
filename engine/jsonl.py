"""JSON Lines: the one torn-last-line policy of every log, ledger and work file of the engine.

A line exists once its newline is written. The last piece of a file without one is a write
in progress (or the write of a writer killed mid-line): readers leave it alone, never an
error, and the next append cuts it off (it never counted). A complete line that is not a
JSON object is damage: reported as ``FILE:LINE: why``, never silently read as data.
Appends are one ``write()`` under an exclusive ``flock``, then ``fsync``: a kill loses at
most that append. (A job's event log has one writer, ``engine.events.EventWriter``, which
keeps its descriptor open and needs no lock; ``EventReader`` applies this policy incrementally.)
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine.workspace import fsync_dir, named

FILE_MODE = 0o600
_TAIL_BLOCK = 1 << 16
_scan_once = json.JSONDecoder().scan_once  # the C scanner json.loads ends in, without its per-call wrappers


class JsonlError(ValueError):
    """A complete line that is not a JSON object; the message names ``FILE:LINE``."""


def parse(line: bytes) -> Any:
    """``json.loads(line)``, or None where that raises ValueError; about twice as fast on a
    plain UTF-8 object line (the fast path only answers when it consumed the whole line,
    which is exactly when ``json.loads`` returns the same value)."""
    try:
        s = line.decode()
        value, end = _scan_once(s, 0)
        if end == len(s):
            return value
    except (ValueError, StopIteration):
        pass
    try:
        return json.loads(line) if line else None
    except ValueError:
        return None


def complete_part(data: bytes) -> bytes:
    """``data`` up to and including its last newline: what readers may read."""
    return data[: data.rfind(b"\n") + 1]


def complete_lines(data: bytes) -> list[bytes]:
    """The complete lines of ``data`` (without newlines; blank ones kept, so index + 1 is the line number)."""
    return complete_part(data).split(b"\n")[:-1]


def numbered(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` of every complete, non-blank line of ``path`` (none when it is missing)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return
    for number, raw in enumerate(complete_lines(data), start=1):
        if raw.strip():
            yield number, raw


def read_objects(path: Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """The JSON objects of ``path``'s complete lines, oldest first ([] when it is missing).

    A line that is not an object raises ``JsonlError`` naming ``FILE:LINE``; with
    ``problems`` it is appended there instead and skipped (a reader that must go on).
    """
    out = []
    for number, raw in numbered(path):
        rec = parse(raw)
        if isinstance(rec, dict):
            out.append(rec)
            continue
        why = f"{path}:{number}: not a JSON object"
        if problems is None:
            raise JsonlError(why)
        problems.append(why)
    return out


def complete_end(fd: int, size: int) -> int:
    """Offset just past the last newline in an open file's first ``size`` bytes: what readers
    may read (0 when there is no complete line). Reads backwards, a block at a time."""
    pos = size
    while pos > 0:
        lo = max(0, pos - _TAIL_BLOCK)
        i = os.pread(fd, pos - lo, lo).rfind(b"\n")
        if i >= 0:
            return lo + i + 1
        pos = lo
    return 0


def last_complete_line(fd: int, size: int) -> tuple[bytes, int]:
    """(last complete line, offset just past it) of an open file; (b"", 0) when none."""
    end = complete_end(fd, size)
    if not end:
        return b"", 0
    start = complete_end(fd, end - 1)
    return os.pread(fd, end - 1 - start, start), end


def last_line(path: Path) -> bytes:
    """The last complete line of a file without reading all of it (b"" when none)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return b""
    try:
        return last_complete_line(fd, os.fstat(fd).st_size)[0]
    finally:
        os.close(fd)


def append_lines(path: Path, lines: Callable[[bytes | None], list[bytes]]) -> None:
    """Append ``lines(last complete line or None)`` (each ending in a newline) in one write under an
    exclusive flock, then fsync; a torn tail left by a killed writer is cut off first."""
    path = Path(path)
    created = not path.exists()
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
    except OSError as exc:
        raise named(exc, path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        last, end = last_complete_line(fd, size)
        if end != size:
            os.ftruncate(fd, end)
        blob = b"".join(lines(last if end else None))
        if blob:
            if os.write(fd, blob) != len(blob):  # a disk that filled mid-write: the torn tail is cut next time
                raise OSError(errno.ENOSPC, "short write (disk full?)", str(path))
            os.fsync(fd)
    except OSError as exc:
        raise named(exc, path) from None
    finally:
        os.close(fd)  # closing releases the lock
    if created:
        fsync_dir(path.parent)  # the new file's name survives a crash too


def append_jsonl(path: Path, records: list[dict[str, Any]], *, sort_keys: bool = False) -> None:
    """Append records as JSON lines (``append_lines``): a kill loses at most this call."""
    if records:
        data = [(json.dumps(r, sort_keys=sort_keys, default=str) + "\n").encode() for r in records]
        append_lines(path, lambda _last: data)
