"""A job's JSONL log: tail by byte offset, follow or pause, filter; only visible lines are read.

For people (the default; ``v`` shows every event as written): resource ticks are hidden, and
a training step's metrics are folded into the line of that step's progress event (they follow
it in the log), so one step is one line with humanised numbers. A job's stdout/stderr file
(``.out``) shows as plain text.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from pmat_tui.fmt import event_text, parse_event
from pmat_tui.guard import Guarded, safe_lines
from pmat_tui.logfmt import QUIET_KINDS
from pmat_tui.logtail import LogTail

CACHE_LINES = 1000
LOAD_BACK = 1000
STEP_SPAN = 64  # a step's metric lines are looked for this many lines around its progress line
CURSOR = Style(bgcolor="#264f78", bold=True)


class LogView(Guarded, ScrollView, can_focus=True):
    """Line-API view over a ``LogTail``: memory is the offset index plus what is on screen."""

    BINDINGS = [
        Binding("up,k", "cursor(-1)", "up", show=False),
        Binding("down,j", "cursor(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home,g", "top", "top", show=False),
        Binding("end,G", "bottom", "end", show=False),
    ]

    follow: reactive[bool] = reactive(True)

    class CursorMoved(Message):
        def __init__(self, raw: bytes | None) -> None:
            super().__init__()
            self.raw = raw

    def __init__(self, path: Path | None = None, **kw) -> None:
        super().__init__(**kw)
        self.tail: LogTail | None = None
        self.filter_text = ""
        self.people = True  # hide resource ticks, fold a step's metrics into one line
        self.matches: list[int] | None = None
        self.cursor = 0
        self._cache: OrderedDict[int, Text] = OrderedDict()
        if path is not None:
            self.open(path)

    # -- data ---------------------------------------------------------------------
    def open(self, path: Path) -> None:
        if self.tail is not None:
            self.tail.close()
        self.tail = LogTail(path, initial=max(200, self.size.height * 4))
        self._reset_view()
        self.follow = True
        self.cursor = max(0, self.rows - 1)
        self._settle()

    @property
    def path(self) -> Path | None:
        return self.tail.path if self.tail else None

    @property
    def rows(self) -> int:
        if self.tail is None:
            return 0
        return len(self.matches) if self.matches is not None else len(self.tail)

    def _line_of(self, row: int) -> int:
        return self.matches[row] if self.matches is not None else row

    @property
    def plain(self) -> bool:
        """A stdout/stderr file, not an event log."""
        return self.path is not None and self.path.suffix == ".out"

    def _event(self, i: int) -> dict | None:
        return parse_event(self.tail.line(i))

    def _step_metrics(self, i: int) -> list[dict]:
        """The metric events right after progress line ``i`` logged at its step."""
        ev = self._event(i)
        if not ev or ev.get("kind") != "progress" or ev.get("done") is None:
            return []
        out = []
        for j in range(i + 1, min(len(self.tail), i + 1 + STEP_SPAN)):
            m = self._event(j)
            if not m or m.get("kind") not in ("metric", *QUIET_KINDS):
                break
            if m.get("kind") == "metric":
                if m.get("step") != ev["done"]:
                    break
                out.append(m)
        return out

    def _folded(self, i: int) -> bool:
        """A resource tick, or a metric line folded into its step's progress line."""
        ev = self._event(i)
        if not ev:
            return False
        if ev.get("kind") in QUIET_KINDS:
            return True
        if ev.get("kind") != "metric" or ev.get("step") is None:
            return False
        for j in range(i - 1, max(-1, i - 1 - STEP_SPAN), -1):
            prev = self._event(j)
            if not prev:
                return False
            if prev.get("kind") == "progress":
                return prev.get("done") == ev["step"]
            if prev.get("kind") == "metric" and prev.get("step") != ev["step"]:
                return False
        return False

    def _match(self, i: int) -> bool:
        """Shown: not folded away, and the filter is in the line as written or as shown."""
        if self.people and not self.plain and self._folded(i):
            return False
        if not self.filter_text:
            return True
        needle = self.filter_text.lower()
        return needle in self.tail.line(i).decode(errors="replace").lower() or needle in self._text(i).plain.lower()

    def _text(self, i: int) -> Text:
        """Line ``i`` as shown (cached)."""
        text = self._cache.get(i)
        if text is None:
            raw = self.tail.line(i)
            if self.plain:
                text = Text(raw.decode(errors="replace"))
            else:
                text = event_text(raw, self._step_metrics(i) if self.people else None, raw_fields=not self.people)
            text.no_wrap = True
            self._cache[i] = text
            if len(self._cache) > CACHE_LINES:
                self._cache.popitem(last=False)
        return text

    def _filtering(self) -> bool:
        return bool(self.filter_text) or (self.people and not self.plain)

    def _reset_view(self) -> None:
        self._cache.clear()
        if self._filtering() and self.tail is not None:
            self.matches = [i for i in range(len(self.tail)) if self._match(i)]
        else:
            self.matches = None

    def set_people(self, people: bool) -> None:
        self.people = people
        self._reset_view()
        self.cursor = max(0, self.rows - 1)
        self._settle()

    def set_filter(self, text: str) -> None:
        self.filter_text = text.strip()
        self._reset_view()
        self.cursor = max(0, self.rows - 1)
        self._settle()

    def poll(self) -> int:
        """Read what was appended; returns the number of new lines (-1: file replaced)."""
        if self.tail is None:
            return 0
        before = len(self.tail)
        n = self.tail.poll()
        if n == 0:
            return 0
        if n < 0:
            self._reset_view()
        else:
            for i in range(max(0, before - STEP_SPAN), before):  # a step line may gain its metrics
                self._cache.pop(i, None)
            if self.matches is not None:
                self.matches.extend(i for i in range(before, len(self.tail)) if self._match(i))
        if self.follow or n < 0:
            self.cursor = max(0, self.rows - 1)
        self._settle()
        return n

    def _load_back(self) -> int:
        if self.tail is None or self.tail.at_top:
            return 0
        added = self.tail.load_back(LOAD_BACK)
        self._cache.clear()
        if self.matches is not None:
            front = [i for i in range(added) if self._match(i)]
            self.matches = front + [i + added for i in self.matches]
            shift = len(front)
        else:
            shift = added
        self.cursor += shift
        self.scroll_to(y=self.scroll_offset.y + shift, animate=False)
        return shift

    # -- view -----------------------------------------------------------------------
    def _settle(self) -> None:
        self.virtual_size = Size(self.size.width, self.rows)
        h = max(1, self.scrollable_content_region.height)
        y = self.scroll_offset.y
        if self.cursor < y:
            y = self.cursor
        elif self.cursor >= y + h:
            y = self.cursor - h + 1
        self.scroll_to(y=y, animate=False, force=True)
        self.refresh()
        self.post_message(self.CursorMoved(self.cursor_raw()))

    def cursor_raw(self) -> bytes | None:
        """The line under the cursor as written; for a step line, its events as one JSON list."""
        if self.tail is None or not self.rows:
            return None
        i = self._line_of(min(self.cursor, self.rows - 1))
        metrics = self._step_metrics(i) if self.people and not self.plain else []
        if metrics:
            return json.dumps([self._event(i), *metrics]).encode()
        return self.tail.line(i)

    @safe_lines
    def render_line(self, y: int) -> Strip:
        row = self.scroll_offset.y + y
        width = self.scrollable_content_region.width
        if self.tail is None or row >= self.rows:
            return Strip.blank(width)
        text = self._text(self._line_of(row))
        segments = [s for s in text.render(self.app.console) if s.text != "\n"]
        strip = Strip(segments).crop(self.scroll_offset.x, self.scroll_offset.x + width)
        strip = strip.extend_cell_length(width)
        if row == self.cursor and self.has_focus:
            strip = Strip(Segment.apply_style(strip, post_style=CURSOR), width)
        return strip

    def on_resize(self) -> None:
        self._settle()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # -- keys -----------------------------------------------------------------------
    def action_cursor(self, delta: int) -> None:
        if delta < 0 and self.cursor == 0:
            self._load_back()
        self.cursor = max(0, min(self.rows - 1, self.cursor + delta))
        self.follow = self.cursor >= self.rows - 1 and delta > 0 and self.follow
        self._settle()

    def action_page(self, direction: int) -> None:
        h = max(1, self.scrollable_content_region.height - 1)
        if direction < 0 and self.cursor - h < 0:
            self._load_back()
        self.cursor = max(0, min(self.rows - 1, self.cursor + direction * h))
        if direction < 0:
            self.follow = False
        self._settle()

    def action_top(self) -> None:
        self._load_back()
        self.follow = False
        self.cursor = 0
        self._settle()

    def action_bottom(self) -> None:
        self.follow = True
        self.cursor = max(0, self.rows - 1)
        self._settle()
