"""The DAG as an outline: work items, then their stages, with status, progress and reason.

A line-API widget rather than Textual's Tree: a running job changes one label several
times a second, and repainting that one line must stay cheap (a Tree line costs about
ten times more to render). Only lines whose text changed are repainted. Work items whose
stages are all done fold to one line (Enter or space opens them again), and while the
user leaves the cursor alone the view scrolls to keep a running or blocked stage in sight.
"""

from __future__ import annotations

import time

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from engine.dag import topo_order, work_item_order
from engine.overview import StageRow
from pmat_tui.fmt import fmt_num
from pmat_tui.guard import Guarded, safe_lines
from pmat_tui.model import ConsoleModel, status_mark
from pmat_tui.spark import bar, eta_text

CRITICAL = "★"
CURSOR = Style(bgcolor="#264f78", bold=True)
GUIDE = Style(color="grey50")
BAR_CELLS = 10
FOLLOW_AFTER_S = 20.0  # the view follows the running stages once the cursor was left alone this long
ATTENTION = ("needs_approval", "memory", "failed_dependency")
DOING = {"tiny_model": "building a tiny model", "merge": "merging", "quantize": "quantizing",
         "prune": "pruning"}  # what a stage does before its first progress event (else "starting")


def stage_label(row: StageRow, width: int = 18) -> Text:
    """``▶ ★ sample   ██████░░░░ 60% 600/1000 prompts ~32m ±3m``; a reason when not running."""
    sym, style = status_mark(row)
    t = Text()
    t.append(f"{sym} ", style=style)
    t.append(CRITICAL if row.critical else " ", style="bold #ff8700")
    t.append(f" {row.stage:<{width}} ", style="bold" if row.status == "running" else "")
    if row.status == "running":
        if not row.total and not row.done:
            t.append(f"{DOING.get(row.kind, 'starting')}…", style=style)
            return t
        if row.total:
            filled, empty = bar((row.done or 0) / row.total, BAR_CELLS)
            t.append(filled, style="green")
            t.append(empty, style="grey35")
            t.append(f" {100 * (row.done or 0) / row.total:3.0f}% {fmt_num(row.done)}/{fmt_num(row.total)} {row.unit}")
        else:
            t.append(f"{fmt_num(row.done)} {row.unit}", style=style)
        eta = eta_text(row.eta_s, row.eta_pm_s)
        t.append(f" {eta}" if eta else " ETA after 2 steps", style="bold" if eta else "dim")
    elif row.revoked:
        t.append(f"revoked: {row.revoked}", style=style)
    elif row.status == "done":
        t.append("done", style=style)
    else:
        t.append(row.reason, style=style)
    return t


def needs_eye(row: StageRow) -> bool:
    """Running, or waiting on a person or on memory, or failed: what the view keeps in sight."""
    return row.status in ("running", "failed", "crashed") or row.reason_kind in ATTENTION or bool(row.revoked)


class DagTree(Guarded, ScrollView, can_focus=True):
    """One line per work item and per shown stage; the cursor selects a stage."""

    BINDINGS = [
        Binding("up,k", "move(-1)", "up", show=False),
        Binding("down,j", "move(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home,g", "move(-100000)", "first", show=False),
        Binding("end,G", "move(100000)", "last", show=False),
        Binding("space", "toggle", "fold", show=False),
        Binding("enter", "open", "open", show=False),
    ]

    class Highlighted(Message):
        """The cursor is on a stage (``stage``) or a work item (``stage`` is None)."""

        def __init__(self, stage: str | None) -> None:
            super().__init__()
            self.stage = stage

    class Opened(Message):
        """Enter on a stage: show its log."""

        def __init__(self, stage: str) -> None:
            super().__init__()
            self.stage = stage

    def __init__(self, model: ConsoleModel, **kw) -> None:
        super().__init__(**kw)
        self.model = model
        spec = model.spec
        order = topo_order(spec)
        self._width = min(max((len(s) for s in spec.stages), default=8), 22)
        self.item_stages: dict[str, list[str]] = {}
        for item in work_item_order(spec) + [None]:
            stages = [s for s in order if spec.stages[s].work_item == item]
            if stages:
                self.item_stages[item or ""] = stages
        self.folded: set[str] = set()
        self._opened: set[str] = set()  # items the user unfolded: never folded again by us
        self.labels: dict[str, Text] = {f"item:{i}": self._item_label(i, None) for i in self.item_stages}
        self.labels.update({s: Text(s) for stages in self.item_stages.values() for s in stages})
        self.keys: list[str] = []
        self.guides: list[str] = []
        self.line_of: dict[str, int] = {}
        self.cursor = 0
        self._moved_at = 0.0  # when the user last moved the cursor
        self._strips: dict[int, Strip] = {}
        self._layout()
        if model.rows:
            self.update_rows()

    # -- lines --------------------------------------------------------------------------
    def _layout(self) -> None:
        """The shown lines from the fold state; the cursor stays on its key."""
        current = self.keys[self.cursor] if self.keys else None
        self.keys, self.guides = [], []
        for item, stages in self.item_stages.items():
            self.keys.append(f"item:{item}")
            self.guides.append("▸ " if item in self.folded else "▾ ")
            if item in self.folded:
                continue
            for i, s in enumerate(stages):
                self.keys.append(s)
                self.guides.append("└ " if i == len(stages) - 1 else "├ ")
        self.line_of = {k: i for i, k in enumerate(self.keys)}
        if current is not None and current not in self.line_of:  # folded away: the item's line
            current = next((f"item:{i}" for i, ss in self.item_stages.items() if current in ss), None)
        self.cursor = self.line_of.get(current or "", min(self.cursor, len(self.keys) - 1))
        self._strips.clear()
        self.virtual_size = Size(self.size.width, len(self.keys))
        self.refresh()

    def _item_label(self, item: str, done: int | None) -> Text:
        title = f"{item}  {self.model.spec.work_items[item].title}" if item else "(no work item)"
        label = Text(title, style="bold")
        if done is not None:
            n = len(self.item_stages[item])
            label.append(f"  ✔ {done}/{n} done" if done == n else f"  {done}/{n} done",
                         style="green" if done == n else "dim")
        return label

    def _set(self, key: str, label: Text) -> None:
        if self.labels.get(key) != label:
            self.labels[key] = label
            if key in self.line_of:
                self._repaint(self.line_of[key])

    def update_rows(self, stages: list[str] | None = None) -> None:
        """Relabel ``stages`` (all when None, and then the work items and the folds too)."""
        rows = self.model.rows
        for stage in (s for ss in self.item_stages.values() for s in ss) if stages is None else stages:
            row = rows.get(stage)
            if row is not None:
                self._set(stage, stage_label(row, self._width))
        if stages is None:
            fold = set()
            for item, members in self.item_stages.items():
                done = sum(rows[s].status == "done" for s in members if s in rows)
                self._set(f"item:{item}", self._item_label(item, done))
                if done == len(members) and item not in self._opened:
                    fold.add(item)
            if fold != self.folded:
                self.folded = fold
                self._layout()
            self.keep_in_view()

    def keep_in_view(self) -> None:
        """Scroll (the cursor stays) so that the stages needing an eye are in sight, as many as
        fit from the first, unless the user moved the cursor lately."""
        h = self.scrollable_content_region.height
        if h <= 0 or time.monotonic() - self._moved_at < FOLLOW_AFTER_S:
            return
        lines = sorted(self.line_of[s] for s, r in self.model.rows.items() if needs_eye(r) and s in self.line_of)
        if not lines:
            return
        first = lines[0]
        last = max(n for n in lines if n < first + h)  # the last one that fits with the first
        y = self.scroll_offset.y
        if y <= first and last < y + h:
            return
        self.scroll_to(y=max(0, min(first - 1, last - h + 1)), animate=False, force=True)

    # -- cursor -----------------------------------------------------------------------
    @property
    def cursor_key(self) -> str | None:
        return self.keys[self.cursor] if self.keys else None

    @property
    def stage_nodes(self) -> dict[str, int]:
        """Stage -> line (the stages shown, in order)."""
        return {k: i for i, k in enumerate(self.keys) if not k.startswith("item:")}

    def select_stage(self, stage: str) -> None:
        item = next((i for i, ss in self.item_stages.items() if stage in ss), None)
        if item is not None and item in self.folded:
            self.folded.discard(item)
            self._opened.add(item)
            self._layout()
        if stage in self.line_of:
            self._move_to(self.line_of[stage])

    def _move_to(self, line: int) -> None:
        line = max(0, min(len(self.keys) - 1, line))
        old, self.cursor = self.cursor, line
        self._repaint(old)
        self._repaint(line)
        self._scroll_to_cursor()
        key = self.keys[line] if self.keys else None
        self.post_message(self.Highlighted(None if key is None or key.startswith("item:") else key))

    def _scroll_to_cursor(self) -> None:
        h = self.scrollable_content_region.height
        if h <= 0:
            return  # not laid out yet: on_resize comes back here
        y = self.scroll_offset.y
        if self.cursor < y:
            self.scroll_to(y=self.cursor, animate=False, force=True)
        elif self.cursor >= y + h:
            self.scroll_to(y=self.cursor - h + 1, animate=False, force=True)

    def action_move(self, delta: int) -> None:
        self._moved_at = time.monotonic()
        self._move_to(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self.action_move(direction * max(1, self.scrollable_content_region.height - 1))

    def action_toggle(self) -> None:
        """Fold or unfold the work item under the cursor (or the one of the stage under it)."""
        key = self.cursor_key or ""
        item = key[5:] if key.startswith("item:") else next((i for i, ss in self.item_stages.items() if key in ss), None)
        if item is None:
            return
        self._moved_at = time.monotonic()
        if item in self.folded:
            self.folded.discard(item)
            self._opened.add(item)
        else:
            self.folded.add(item)
            self._opened.discard(item)
        self._layout()
        self._move_to(self.line_of.get(key, self.line_of[f"item:{item}"]))

    def action_open(self) -> None:
        key = self.cursor_key
        if key is None or key.startswith("item:"):
            self.action_toggle()
        else:
            self.post_message(self.Opened(key))

    # -- rendering ----------------------------------------------------------------------
    def _repaint(self, line: int) -> None:
        self._strips.pop(line, None)
        y = line - self.scroll_offset.y
        if 0 <= y < self.size.height:
            self.refresh(Region(0, y, self.size.width, 1))

    @safe_lines
    def render_line(self, y: int) -> Strip:
        line = self.scroll_offset.y + y
        width = self.scrollable_content_region.width
        if line >= len(self.keys):
            return Strip.blank(width, self.rich_style)
        strip = self._strips.get(line)
        if strip is None or strip.cell_length != width:
            text = Text(no_wrap=True, overflow="ellipsis")
            text.append(self.guides[line], style=GUIDE)
            text.append_text(self.labels[self.keys[line]])
            text.truncate(width, overflow="ellipsis")
            segments = [s for s in text.render(self.app.console) if s.text != "\n"]
            style = self.rich_style  # from the CSS of every ancestor: look it up once
            strip = Strip(Segment.apply_style(segments, style)).crop_extend(0, width, style)
            if line == self.cursor and self.has_focus:
                strip = Strip(Segment.apply_style(strip, post_style=CURSOR), width)
            self._strips[line] = strip
        return strip

    def on_resize(self) -> None:
        # cached strips stay: render_line renders again those of another width (the first frame
        # comes after several resizes to the same size)
        self.virtual_size = Size(self.size.width, len(self.keys))
        self._scroll_to_cursor()
        self.call_after_refresh(self.keep_in_view)  # once laid out: the first frame shows the running stages

    def on_focus(self) -> None:
        self._repaint(self.cursor)

    def on_blur(self) -> None:
        self._repaint(self.cursor)
