"""A job's JSONL log: tail by byte offset, follow or pause, filter; only visible lines are read."""

from __future__ import annotations

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

from pmat_tui.fmt import event_text
from pmat_tui.logtail import LogTail

CACHE_LINES = 1000
LOAD_BACK = 1000
CURSOR = Style(bgcolor="#264f78", bold=True)


class LogView(ScrollView, can_focus=True):
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

    def _match(self, i: int) -> bool:
        return self.filter_text.lower() in self.tail.line(i).decode(errors="replace").lower()

    def _reset_view(self) -> None:
        self._cache.clear()
        if self.filter_text and self.tail is not None:
            self.matches = [i for i in range(len(self.tail)) if self._match(i)]
        else:
            self.matches = None

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
        elif self.matches is not None:
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
        if self.tail is None or not self.rows:
            return None
        return self.tail.line(self._line_of(min(self.cursor, self.rows - 1)))

    def render_line(self, y: int) -> Strip:
        row = self.scroll_offset.y + y
        width = self.scrollable_content_region.width
        if self.tail is None or row >= self.rows:
            return Strip.blank(width)
        i = self._line_of(row)
        text = self._cache.get(i)
        if text is None:
            text = event_text(self.tail.line(i))
            text.no_wrap = True
            self._cache[i] = text
            if len(self._cache) > CACHE_LINES:
                self._cache.popitem(last=False)
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
