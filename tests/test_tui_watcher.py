"""pmat_tui.watcher on its own: the refresh clock, and the watch thread on a real directory
(wakes on a write, pauses while folds keep finding events, resumes, stops; no inotify: poll)."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

from pmat_tui.watcher import MIN_REFRESH_S, POLL_S, WATCH_PAUSE_FOLDS, FilesChanged, Watcher


def test_refresh_clock() -> None:
    w = Watcher(Path("/nonexistent"), lambda _: None)
    assert w.due_now()  # nothing folded yet
    w.folding()
    assert not w.due_now()  # under MIN_REFRESH_S ago: pending for the next tick
    assert w.tick()
    w.folding()
    per_poll = round(POLL_S / MIN_REFRESH_S)
    assert [w.tick() for _ in range(2 * per_poll)].count(True) == 2  # a poll every POLL_S anyway
    w.folded(True)  # events keep coming: every tick folds
    assert all(w.tick() for _ in range(3))
    w.folded(False)
    w.received(FilesChanged(watch_failed=True))  # no inotify: every tick polls
    assert all(w.tick() for _ in range(3))


def _next(q: queue.Queue, timeout: float) -> FilesChanged | None:
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        return None


def _write_until_posted(path: Path, q: queue.Queue) -> FilesChanged | None:
    """Append to ``path`` until the watch reports it (it may still be starting on a busy machine)."""
    for i in range(40):
        with path.open("a") as fh:
            fh.write(f"{i}\n")
        msg = _next(q, 0.25)
        if msg is not None:
            return msg
    return None


def test_watch_wakes_pauses_resumes_and_stops(tmp_path: Path) -> None:
    posted: queue.Queue = queue.Queue()
    w = Watcher(tmp_path, posted.put)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    msg = _write_until_posted(tmp_path / "a.jsonl", posted)
    assert isinstance(msg, FilesChanged) and not msg.watch_failed
    (tmp_path / "a.jsonl").write_text("y\n")
    assert _next(posted, 0.5) is None  # one message in flight until the UI took it
    w.received(msg)
    for _ in range(WATCH_PAUSE_FOLDS):  # folds keep finding events: the ticks poll, the watch pauses
        w.folded(True)
    time.sleep(0.3)
    while _next(posted, 0) is not None:  # what the watch saw before the folds said so
        pass
    (tmp_path / "b.jsonl").write_text("z\n")
    assert _next(posted, 1.0) is None
    w.folded(False)  # a quiet fold: the watch runs again
    assert isinstance(_write_until_posted(tmp_path / "c.jsonl", posted), FilesChanged)
    w.stop()
    thread.join(5)
    assert not thread.is_alive()


def test_no_inotify_asks_for_polling(tmp_path: Path) -> None:
    posted: queue.Queue = queue.Queue()
    w = Watcher(tmp_path / "missing", posted.put)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    msg = _next(posted, 10)
    assert isinstance(msg, FilesChanged) and msg.watch_failed
    thread.join(5)
