"""The DAG as a tree: work items, then their stages, with status, critical path and reason."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from engine.dag import topo_order, work_item_order
from engine.overview import StageRow
from pmat_tui.fmt import fmt_duration, fmt_num
from pmat_tui.model import ConsoleModel, status_mark

CRITICAL = "★"


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


class DagTree(Tree[str]):
    """Node data: a stage name, or ``item:<id>`` for a work item."""

    def __init__(self, model: ConsoleModel, **kw) -> None:
        super().__init__(model.spec.name, data="", **kw)
        self.model = model
        self.stage_nodes: dict[str, TreeNode[str]] = {}
        self.item_nodes: dict[str, TreeNode[str]] = {}
        self.item_stages: dict[str, list[str]] = {}
        self._shown: dict[str, Text] = {}  # set_label repaints: only when the label changed
        self.show_root = False
        self.guide_depth = 2
        spec = model.spec
        order = topo_order(spec)
        width = max((len(s) for s in spec.stages), default=8)
        self._width = min(width, 22)
        for item in work_item_order(spec) + [None]:
            stages = [s for s in order if spec.stages[s].work_item == item]
            if not stages:
                continue
            title = f"{item}  {spec.work_items[item].title}" if item else "(no work item)"
            node = self.root.add(title, data=f"item:{item or ''}", expand=True)
            self.item_nodes[item or ""] = node
            self.item_stages[item or ""] = stages
            for s in stages:
                self.stage_nodes[s] = node.add_leaf(s, data=s)
        self.root.expand()
        if model.rows:  # already folded: build with the final labels (no relabelling pass)
            self.update_rows()

    def _set(self, key: str, node: TreeNode[str], label: Text) -> None:
        if self._shown.get(key) != label:
            self._shown[key] = label
            node.set_label(label)

    def update_rows(self, stages: list[str] | None = None) -> None:
        """Relabel ``stages`` (all when None) and the work items."""
        rows = self.model.rows
        for stage in self.stage_nodes if stages is None else stages:
            row = rows.get(stage)
            if row is not None and stage in self.stage_nodes:
                self._set(stage, self.stage_nodes[stage], stage_label(row, self._width))
        if stages is not None:
            return  # work item counts change only with a rebuild
        for item, node in self.item_nodes.items():
            done = sum(rows[s].status == "done" for s in self.item_stages[item] if s in rows)
            title = f"{item}  {self.model.spec.work_items[item].title}" if item else "(no work item)"
            label = Text(title, style="bold")
            label.append(f"  {done}/{len(self.item_stages[item])} done", style="dim")
            self._set(f"item:{item}", node, label)

    def select_stage(self, stage: str) -> None:
        node = self.stage_nodes.get(stage)
        if node is not None:
            self.move_cursor(node)
