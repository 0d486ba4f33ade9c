"""Memory: what is available, the pressure, what each job uses and reserves, who waits and why."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from engine.spec import GIB
from pmat_tui.fmt import fmt_bytes
from pmat_tui.model import ConsoleModel


def _table(*cols: str) -> Table:
    return Table(*cols, box=None, padding=(0, 1), show_edge=False, header_style="bold dim")


class MemoryPanel(Static):
    """Rendered from ``ConsoleModel.memory()`` and the overview's queue."""

    def show(self, model: ConsoleModel) -> None:
        self.update(self.render_memory(model))

    def render_memory(self, model: ConsoleModel) -> RenderableType:
        mem = model.memory()
        snap = mem["snapshot"]
        parts: list[RenderableType] = []
        head = Text()
        head.append("available ", style="bold")
        head.append(f"{fmt_bytes(snap.available)} of {fmt_bytes(snap.total)}")
        frac = snap.available / snap.total if snap.total else 0
        head.append(f" ({100 * frac:.0f}% free)", style="green" if frac > 0.25 else "bold red")
        if snap.psi is not None:
            some, full = snap.psi.get("some", 0.0), snap.psi.get("full", 0.0)
            head.append(f" · PSI some {some:.1f}% full {full:.1f}% (avg10)", style="bold red" if full > 5 else "")
        else:
            head.append(" · PSI not available", style="dim")
        parts.append(head)
        for g in snap.gpus:
            if g.unified:
                parts.append(Text(f"GPU {g.name}: unified memory (shares system memory; MemAvailable is the budget)", style="cyan"))
            else:
                parts.append(Text(f"GPU {g.name}: {fmt_bytes(g.used)} used of {fmt_bytes(g.total)}"))
        headroom = mem["headroom"]
        parts.append(Text(f"admission headroom {fmt_bytes(max(headroom, 0))} (margin {fmt_bytes(mem['margin'])}"
                          + (f", budget {fmt_bytes(mem['budget'])}" if mem["budget"] else "") + ")",
                          style="bold" if headroom > 0 else "bold red"))
        jobs = _table("job", "RSS", "peak", "reserved", "GPU")
        per_pid = {pid: b for g in snap.gpus for pid, b in g.per_process.items()}
        for a in mem["running"]:
            pid = (a.identity or {}).get("pid")
            gpu = per_pid.get(pid, a.gpu)
            jobs.add_row(a.job_id, fmt_bytes(a.rss or None), fmt_bytes(a.peak_rss or None),
                         fmt_bytes(a.reservation or None), fmt_bytes(gpu) if gpu is not None else "-")
        parts += [Text("Running jobs", style="bold underline"),
                  jobs if mem["running"] else Text("none", style="dim")]
        queue = _table("stage", "needs", "why waiting")
        waiting = [r for r in model.rows.values() if r.status == "queued"]
        for r in waiting:
            need = model.spec.stages[r.stage].memory_gb
            style = "yellow" if r.reason_kind == "memory" else ""
            queue.add_row(r.stage, f"{need:g} GB", Text(r.reason, style=style))
        parts += [Text("Queue", style="bold underline"), queue if waiting else Text("empty", style="dim")]
        total_res = sum(a.reservation for a in mem["running"])
        parts.append(Text(f"reserved by admitted jobs: {total_res / GIB:.1f} GB", style="dim"))
        return Group(*parts)
