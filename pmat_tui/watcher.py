"""When the console folds new events: the thread that watches logs/ and the refresh clock.

New events are noticed through watchfiles (inotify) with a slow polling fallback, and folded
in at most every ``MIN_REFRESH_S`` so that a busy log does not keep the console busy. While a
stream of events lasts the ticks poll anyway, so the watch pauses (it would wake for every
write and take the GIL every 50 ms) and starts again once a fold finds nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from textual.message import Message

MIN_REFRESH_S = 0.25
POLL_S = 1.0
WATCH_PAUSE_FOLDS = 4  # folds in a row that found events before the watcher pauses (the ticks poll)


class FilesChanged(Message):
    """Sent by the watcher thread when something under logs/ changed."""

    def __init__(self, watch_failed: bool = False) -> None:
        super().__init__()
        self.watch_failed = watch_failed


class Watcher:
    """Decides when to fold: on a change the watch reports (at most every ``MIN_REFRESH_S``), at
    every tick while folds find events, and every ``POLL_S`` anyway (ETAs count down; file
    systems without inotify). ``post`` must be thread-safe (``App.post_message`` is)."""

    def __init__(self, logs_dir: Path, post: Callable[[Message], object]) -> None:
        self.logs_dir = logs_dir
        self._post = post
        self._stop = threading.Event()
        self._change_posted = threading.Event()
        self._quiet = threading.Event()  # set while the watch should run (no long stream of events, not stopping)
        self._quiet.set()
        self._loud = threading.Event()  # the running watch's stop event: set while streaming or stopping
        self._streak = 0  # consecutive folds that found events
        self._streaming = False  # events keep coming: poll each tick instead of per-change wakeups
        self._last_fold = 0.0
        self._pending = False
        self._ticks = 0
        self._ticks_per_poll = round(POLL_S / MIN_REFRESH_S)

    def run(self) -> None:
        """The watch thread's body: post ``FilesChanged`` when a log under logs/ changes
        (one message in flight at a time); returns after ``stop``."""
        import watchfiles

        try:
            while self._quiet.wait() and not self._stop.is_set():
                for _ in watchfiles.watch(self.logs_dir, debounce=100, step=50, stop_event=self._loud,
                                          raise_interrupt=False, rust_timeout=1000, yield_on_timeout=False):
                    if not self._loud.is_set() and not self._streaming and not self._change_posted.is_set():
                        self._change_posted.set()
                        self._post(FilesChanged())
        except Exception:  # noqa: BLE001 - no inotify (network fs, limits): poll faster instead
            if not self._stop.is_set():
                self._post(FilesChanged(watch_failed=True))

    def stop(self) -> None:
        self._stop.set()
        self._loud.set()
        self._quiet.set()

    def received(self, message: FilesChanged) -> None:
        """The UI thread took ``message``: the watch may post again; without inotify, poll at every tick."""
        self._change_posted.clear()
        if message.watch_failed:
            self._ticks_per_poll = 1

    def due_now(self) -> bool:
        """A fold was asked for: now if the last one is ``MIN_REFRESH_S`` old, else at the next tick."""
        if time.monotonic() - self._last_fold >= MIN_REFRESH_S:
            return True
        self._pending = True
        return False

    def tick(self) -> bool:
        """Every ``MIN_REFRESH_S`` (one timer, not one per change): whether to fold now."""
        self._ticks += 1
        return self._pending or self._streaming or self._ticks % self._ticks_per_poll == 0

    def folding(self) -> None:
        """A fold starts: nothing is pending any more."""
        self._pending = False
        self._last_fold = time.monotonic()

    def folded(self, streaming: bool) -> None:
        """Poll at each tick while folds find events; after ``WATCH_PAUSE_FOLDS`` such folds in a
        row the watch pauses, and it resumes with the first fold that finds nothing."""
        self._streaming = streaming
        self._streak = self._streak + 1 if streaming else 0
        if self._stop.is_set():
            return
        if self._streak == WATCH_PAUSE_FOLDS:
            self._quiet.clear()
            self._loud.set()
        elif not streaming and not self._quiet.is_set():
            self._loud.clear()
            self._quiet.set()
