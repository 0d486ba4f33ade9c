"""Hash-chained JSONL: every line carries ``"prev"``, the sha256 of the line before it.

Used by the results ledger and the supervisor journal so that an edited, inserted,
reordered or deleted line is noticed: ``verify_chain`` reports the first line whose
``prev`` does not match (or that is not a JSON object) and nothing from there on
counts, until the user accepts the file as it is now (``accept_break``). The
acceptance lives next to the file (``<name>.accepted``), sealed with the user's key, and
covers exactly the bytes accepted: a later edit of that prefix breaks the chain again.

A line's digest is the sha256 of its bytes without the newline. Lines are read and
appended under ``engine.jsonl``'s one torn-last-line policy.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.jsonl import append_lines, complete_lines, complete_part, parse
from engine.workspace import atomic_write_bytes

FILE_MODE = 0o600


def line_digest(line: bytes) -> str:
    """The digest the next line's ``prev`` must carry (``line`` without its newline)."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


@dataclass
class ChainReport:
    """What a chained file says: the records that count and where (if) it broke."""

    records: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # 1-based line number of each record
    digests: list[str] = field(default_factory=list)  # each record's line digest
    broken_line: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_line is None


def _key_dirs() -> list[Path]:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return [Path(state) / "pmat", Path(tempfile.gettempdir()) / f"pmat-{os.getuid()}"]


def user_key(create: bool = True) -> bytes:
    """A per-user secret kept outside every workspace (``$XDG_STATE_HOME/pmat/key``, 0600;
    a private temp directory when that cannot be written).

    Seals made with it bind records and approvals to the processes that made them, so hand
    edits inside a workspace cannot mint a valid one. Empty when there is none (and
    ``create`` is off, or nowhere can hold one): then no seal verifies.
    """
    for home in _key_dirs():
        path = home / "key"
        try:
            if path.is_file() and path.stat().st_uid == os.getuid():
                return path.read_bytes()
            if not create:
                continue
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            except FileExistsError:  # another process made it just now
                time.sleep(0.05)
                return path.read_bytes()
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(32))
                fh.flush()
                os.fsync(fh.fileno())
            return path.read_bytes()
        except OSError:
            continue
    return b""


def seal(*parts: str, key: bytes | None = None) -> str:
    """HMAC-SHA256 of the parts under the user's key."""
    return hmac.new(user_key() if key is None else key, "\0".join(parts).encode(), "sha256").hexdigest()


def sealed(mac: object, *parts: str, key: bytes | None = None) -> bool:
    """True when ``mac`` is the seal of ``parts`` under the user's (existing, non-empty) key."""
    key = user_key(create=False) if key is None else key
    return bool(key) and isinstance(mac, str) and hmac.compare_digest(mac, seal(*parts, key=key))


def _accept_path(path: Path) -> Path:
    return path.with_name(path.name + ".accepted")


def append_chained(path: Path, records: list[dict[str, Any]],
                   before_write: Callable[[list[str]], None] | None = None) -> list[str]:
    """Append records as chained JSON lines in one write under an flock, then fsync.

    Returns each written line's digest; ``before_write(digests)`` runs under the lock
    just before the write (to announce the digests elsewhere first). A torn last line
    left by a killed writer is cut off first (it never counted), so the new lines
    chain to the last complete one.
    """
    digests: list[str] = []

    def chained(last: bytes | None) -> list[bytes]:
        prev = "" if last is None else line_digest(last)
        data = []
        for rec in records:
            line = json.dumps({**rec, "prev": prev}, default=str).encode()
            prev = line_digest(line)
            digests.append(prev)
            data.append(line + b"\n")
        if data and before_write is not None:
            before_write(digests)
        return data

    append_lines(Path(path), chained)
    return digests


def _acceptance(path: Path, data: bytes) -> tuple[int, int, str] | None:
    """(bytes, lines, last digest) accepted by the user, if the file still starts with them."""
    try:
        acc = json.loads(_accept_path(path).read_text())
        n_bytes, n_lines, last = int(acc["bytes"]), int(acc["lines"]), str(acc["last"])
        digest = str(acc["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not sealed(acc.get("seal"), path.name, str(n_bytes), digest, str(n_lines), last, key=user_key(create=False)):
        return None  # written by hand, not by `pmat verify --accept`
    if len(data) < n_bytes or hashlib.sha256(data[:n_bytes]).hexdigest() != digest:
        return None
    return n_bytes, n_lines, last


def _count(report: ChainReport, rec: dict[str, Any], number: int, raw: bytes) -> None:
    report.records.append(rec)
    report.lines.append(number)
    report.digests.append(line_digest(raw))


def verify_chain(path: Path) -> ChainReport:
    """Check every line's ``prev``; the records before the first break count."""
    path = Path(path)
    report = ChainReport()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return report
    accepted = _acceptance(path, complete_part(data))
    skip_lines, prev = (accepted[1], accepted[2]) if accepted else (0, "")
    for number, raw in enumerate(complete_lines(data), start=1):
        rec = parse(raw)
        if number <= skip_lines:
            if isinstance(rec, dict):
                _count(report, rec, number, raw)
            continue
        if not isinstance(rec, dict):
            report.broken_line, report.reason = number, f"{path}:{number}: not a JSON object"
            return report
        if rec.get("prev") != prev:
            what = "has no chain digest" if "prev" not in rec else "does not follow the line before it"
            report.broken_line, report.reason = number, f"{path}:{number}: {what} (edited, inserted or removed lines)"
            return report
        prev = line_digest(raw)
        _count(report, rec, number, raw)
    return report


def accept_break(path: Path) -> ChainReport:
    """Accept the file as it is now: every complete line counts, appends chain on from the last.

    Recorded in ``<name>.accepted`` (bytes, their sha256, line count, last digest).
    """
    path = Path(path)
    data = path.read_bytes() if path.exists() else b""
    complete, lines = complete_part(data), complete_lines(data)
    acc: dict[str, Any] = {"bytes": len(complete), "sha256": hashlib.sha256(complete).hexdigest(), "lines": len(lines),
                           "last": line_digest(lines[-1]) if lines else "", "accepted_at": time.time()}
    acc["seal"] = seal(path.name, str(acc["bytes"]), acc["sha256"], str(acc["lines"]), acc["last"])
    atomic_write_bytes(_accept_path(path), (json.dumps(acc, sort_keys=True) + "\n").encode())
    return verify_chain(path)
