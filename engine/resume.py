"""When a stage resumes by itself: after a crash (where its spec allows), and after a failure
for lack of space once its disk has room again. Shared by the supervisor (which acts on it)
and ``pmat demo`` (which must not give up on a stage that will come back)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from engine.spec import StageEntry
from engine.state import Attempt, StageState

# How a lack of space shows in a job's error: errno 28 from Python, Rust (safetensors) or C++ (torch).
DISK_FULL_RE = re.compile(r"\[Errno 28\]|No space left on device|os error 28|file write failed")
_NAMED_PATH_RE = re.compile(r"\[Errno 28\][^:]*: '([^']+)'")
MIN_SPACE_BACK = 256 << 20  # "space is back": this much more free than when the failure was seen (or 5% of the disk)
DISK_FULL_BELOW = 16 << 20  # a crash while less than this is free is taken for a disk-full failure


def resumable(entry: StageEntry | None, st: StageState) -> bool:
    """The stage resumes after a crash: it allows it, has attempts left and was not cancelled."""
    return entry is not None and entry.resume and len(st.attempts) < entry.max_attempts and not st.cancel_requested


def will_resume(entry: StageEntry | None, st: StageState) -> bool:
    """True when the supervisor resumes this stage's crashed latest attempt by itself."""
    a = st.latest
    return a is not None and a.outcome == "crashed" and resumable(entry, st)


def waits_for_space(st: StageState, root: Path) -> bool:
    """The stage's latest attempt failed for lack of space: its error says so, the supervisor
    said so, or it failed while the workspace's disk is (nearly) full. It resumes by itself."""
    a = st.latest
    if a is None or a.outcome not in ("failed", "crashed") or st.retry_pending:
        return False
    return (bool(DISK_FULL_RE.search(a.error or "")) or (st.waiting or "").startswith("disk full")
            or a.outcome == "failed" and free_bytes(root) < DISK_FULL_BELOW)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``."""
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def disk_of(a: Attempt, root: Path) -> Path:
    """Where the attempt ran out of space: the path its error names, else the workspace."""
    m = _NAMED_PATH_RE.search(a.error or "")
    return Path(m.group(1)) if m else root


class DiskWatch:
    """Per stage, the free space seen when its disk-full failure was noticed; space is back when
    that much more is free (MIN_SPACE_BACK, or 5% of the disk, at least 1 MiB)."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def forget(self, stage: str) -> None:
        self._seen.pop(stage, None)

    def look(self, stage: str, st: StageState, root: Path) -> tuple[str | None, str | None]:
        """(the waiting reason to journal, first time only; the resume reason once space is back)."""
        a = st.latest
        assert a is not None
        where = disk_of(a, root)
        free = free_bytes(where)
        said = None
        if stage not in self._seen:
            self._seen[stage] = free
            if not (st.waiting or "").startswith("disk full"):  # not said before a restart
                said = (f"disk full under {where} ({free >> 20} MiB free): {a.job_id} failed with: {a.error}; "
                        "resumes when space returns")
        vfs = os.statvfs(where)
        if free < self._seen[stage] + min(MIN_SPACE_BACK, max(1 << 20, vfs.f_blocks * vfs.f_frsize // 20)):
            return said, None
        self._seen.pop(stage)
        return said, f"resume after {a.job_id}: space is back under {where} ({free >> 20} MiB free)"
