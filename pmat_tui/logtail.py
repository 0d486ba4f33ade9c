"""A JSONL log seen from its end: line offsets indexed lazily, backwards on demand.

A 1 GB log is never read whole (REFERENCE: toolong reads only what is on screen).
``LogTail`` finds the last lines by reading blocks backwards from the end, extends
the index further back only when asked (``load_back``), appends new complete lines
by byte offset (``poll``), and starts over at the tail when the file shrank or was
replaced (truncation, rotation). Lines are read with ``os.pread`` when shown.
"""

from __future__ import annotations

import os
from array import array
from pathlib import Path

from engine.jsonl import complete_end

BLOCK = 1 << 16


class LogTail:
    """Offsets of the last lines of a file; ``line(i)`` reads one line."""

    def __init__(self, path: Path, initial: int = 500) -> None:
        self.path = Path(path)
        self.initial = initial
        self.starts = array("q")  # start offset of each indexed line, ascending
        self.end = 0  # offset just past the last complete line
        self.inode: int | None = None
        self.resets = 0
        self._fd: int | None = None
        self._open()

    # -- file handling ------------------------------------------------------------
    def _open(self) -> None:
        self.close()
        self.starts = array("q")
        self.end = 0
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            self.inode = None
            return
        st = os.fstat(self._fd)
        self.inode = st.st_ino
        self.end = complete_end(self._fd, st.st_size)  # a torn last line waits for its newline
        self.load_back(self.initial)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def head(self) -> int:
        """Offset of the first indexed line."""
        return self.starts[0] if self.starts else self.end

    @property
    def at_top(self) -> bool:
        return self.head == 0

    def __len__(self) -> int:
        return len(self.starts)

    # -- indexing -----------------------------------------------------------------
    def load_back(self, n: int) -> int:
        """Index up to ``n`` more lines before the first indexed one; returns how many."""
        h = self.head
        if self._fd is None or h == 0:
            return 0
        found: list[int] = []  # line starts, newest first
        hi = h - 1  # the newline ending the line before ``h`` sits at h-1
        while len(found) < n and hi > 0:
            lo = max(0, hi - BLOCK)
            block = os.pread(self._fd, hi - lo, lo)
            i = len(block)
            while len(found) < n and (i := block.rfind(b"\n", 0, i)) >= 0:
                found.append(lo + i + 1)
            hi = lo
        if len(found) < n:
            found.append(0)  # reached the start of the file: its first line
        found.reverse()
        self.starts = array("q", found) + self.starts
        return len(found)

    def poll(self) -> int:
        """Index lines appended since the last poll; returns how many (-1 after a reset)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return 0
        if self._fd is None or st.st_ino != self.inode or st.st_size < self.end:
            self.resets += 1 if self.inode is not None else 0
            self._open()
            return -1
        if st.st_size == self.end:
            return 0
        added = 0
        pos = self.end
        while pos < st.st_size:
            block = os.pread(self._fd, min(BLOCK * 16, st.st_size - pos), pos)
            last = block.rfind(b"\n")
            if last < 0:
                break
            start = 0
            while True:
                i = block.find(b"\n", start, last + 1)
                if i < 0:
                    break
                self.starts.append(pos + start)
                added += 1
                start = i + 1
            pos += last + 1
            self.end = pos
        return added

    def line(self, i: int) -> bytes:
        """Line ``i`` of the index, without its newline."""
        start = self.starts[i]
        stop = self.starts[i + 1] if i + 1 < len(self.starts) else self.end
        if self._fd is None or stop <= start:
            return b""
        return os.pread(self._fd, stop - start - 1, start)
