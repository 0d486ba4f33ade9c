"""The DAG as an outline: work items, then their stages, with status, critical path and reason.

A line-API widget rather than Textual's Tree: a running job changes one label several
times a second, and repainting that one line must stay cheap (a Tree line costs about
ten times more to render). Only lines whose text changed are repainted.
"""

from __future__ import annotations

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
from pmat_tui.fmt import fmt_duration, fmt_num
from pmat_tui.model import ConsoleModel, status_mark

CRITICAL = "★"
CURSOR = Style(bgcolor="#264f78", bold=True)
GUIDE = Style(color="grey50")


def coarse_eta(s: float | None) -> str:
    """Minutes at most: a label that changes every second would repaint the tree every second."""
    if s is None:
        return "-"
    if s >= 3600:
        return fmt_duration(s - s % 60)
    return f"{int(s // 60)}m" if s >= 60 else "<1m"


def stage_label(row: StageRow, width: int = 18) -> Text:
    sym, style = status_mark(row)
    t = Text()
    t.append(f"{sym} ", style=style)
    t.append(CRITICAL if row.critical else " ", style="bold #ff8700")
    t.append(f" {row.stage:<{width}} ", style="bold" if row.status == "running" else "")
    if row.status == "running":
        if row.total:
            t.append(f"{fmt_num(row.done)}/{fmt_num(row.total)} {row.unit} {100 * (row.done or 0) / row.total:.0f}%", style=style)
        else:
            t.append(f"{fmt_num(row.done)} {row.unit}", style=style)
        t.append(f" ETA {coarse_eta(row.eta_s)}", style=style)
    elif row.status == "done":
        t.append("done", style=style)
    else:
        t.append(row.reason, style=style)
    return t


class DagTree(ScrollView, can_focus=True):
    """One line per work item and per stage; the cursor selects a stage."""

    BINDINGS = [
        Binding("up,k", "move(-1)", "up", show=False),
        Binding("down,j", "move(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "move(-100000)", "first", show=False),
        Binding("end", "move(100000)", "last", show=False),
    ]

    class Highlighted(Message):
        """The cursor is on a stage (``stage``) or a work item (``stage`` is None)."""

        def __init__(self, stage: str | None) -> None:
            super().__init__()
            self.stage = stage

    def __init__(self, model: ConsoleModel, **kw) -> None:
        super().__init__(**kw)
        self.model = model
        spec = model.spec
        order = topo_order(spec)
        self._width = min(max((len(s) for s in spec.stages), default=8), 22)
        self.keys: list[str] = []  # "item:<id>" or a stage name, one per line
        self.guides: list[str] = []
        self.item_stages: dict[str, list[str]] = {}
        for item in work_item_order(spec) + [None]:
            stages = [s for s in order if spec.stages[s].work_item == item]
            if not stages:
                continue
            self.keys.append(f"item:{item or ''}")
            self.guides.append("▼ ")
            self.item_stages[item or ""] = stages
            for i, s in enumerate(stages):
                self.keys.append(s)
                self.guides.append("└ " if i == len(stages) - 1 else "├ ")
        self.line_of = {k: i for i, k in enumerate(self.keys)}
        self.labels: dict[str, Text] = {k: self._item_label(k[5:], None) if k.startswith("item:") else Text(k)
                                         for k in self.keys}
        self.cursor = 0
        self._strips: dict[int, Strip] = {}
        self.virtual_size = Size(0, len(self.keys))
        if model.rows:
            self.update_rows()

    # -- labels -----------------------------------------------------------------------
    def _item_label(self, item: str, done: int | None) -> Text:
        title = f"{item}  {self.model.spec.work_items[item].title}" if item else "(no work item)"
        label = Text(title, style="bold")
        if done is not None:
            label.append(f"  {done}/{len(self.item_stages[item])} done", style="dim")
        return label

    def _set(self, key: str, label: Text) -> None:
        if self.labels.get(key) != label:
            self.labels[key] = label
            self._repaint(self.line_of[key])

    def update_rows(self, stages: list[str] | None = None) -> None:
        """Relabel ``stages`` (all when None, and then the work items too)."""
        rows = self.model.rows
        for stage in self.keys if stages is None else stages:
            row = rows.get(stage)
            if row is not None and stage in self.line_of:
                self._set(stage, stage_label(row, self._width))
        if stages is None:
            for item, members in self.item_stages.items():
                done = sum(rows[s].status == "done" for s in members if s in rows)
                self._set(f"item:{item}", self._item_label(item, done))

    # -- cursor -----------------------------------------------------------------------
    @property
    def cursor_key(self) -> str | None:
        return self.keys[self.cursor] if self.keys else None

    @property
    def stage_nodes(self) -> dict[str, int]:
        """Stage -> line (the stages shown, in order)."""
        return {k: i for i, k in enumerate(self.keys) if not k.startswith("item:")}

    def select_stage(self, stage: str) -> None:
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
        self._move_to(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self._move_to(self.cursor + direction * max(1, self.scrollable_content_region.height - 1))

    # -- rendering ----------------------------------------------------------------------
    def _repaint(self, line: int) -> None:
        self._strips.pop(line, None)
        y = line - self.scroll_offset.y
        if 0 <= y < self.size.height:
            self.refresh(Region(0, y, self.size.width, 1))

    def render_line(self, y: int) -> Strip:
        line = self.scroll_offset.y + y
        width = self.scrollable_content_region.width
        if line >= len(self.keys):
            return Strip.blank(width, self.rich_style)
        strip = self._strips.get(line)
        if strip is None or strip.cell_length != width:
            text = Text(no_wrap=True)
            text.append(self.guides[line], style=GUIDE)
            text.append_text(self.labels[self.keys[line]])
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

    def on_focus(self) -> None:
        self._repaint(self.cursor)

    def on_blur(self) -> None:
        self._repaint(self.cursor)
