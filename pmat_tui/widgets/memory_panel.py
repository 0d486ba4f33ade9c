"""Memory: what is available, the pressure, what each job uses and reserves, who waits and why."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from engine.spec import GIB
from pmat_tui.fmt import fmt_bytes
from pmat_tui.model import ConsoleModel
from pmat_tui.spark import bar


def _table(*cols: str) -> Table:
    return Table(*cols, box=None, padding=(0, 1), show_edge=False, header_style="bold dim")


def meter(label: str, used: float | None, total: float | None, width: int, note: str = "",
          extra: float | None = None) -> Text:
    """``label ██████▒▒░░░░ 39.0/119.0 GB note``: used (green to red as it fills), then ``extra``
    (reserved, not yet used) shaded, of ``total``; nothing drawn without a total."""
    line = Text(f"{label:<14.14}", style="bold", no_wrap=True, overflow="ellipsis")
    if not total or used is None:
        line.append(f"{fmt_bytes(used)} {note}".rstrip(), style="dim")
        return line
    frac = used / total
    filled, _ = bar(frac, width)
    line.append(filled, style="green" if frac < 0.6 else "yellow" if frac < 0.85 else "bold red")
    shade = bar(min(1.0, (used + (extra or 0)) / total), width)[0][len(filled):] if extra else ""
    line.append("▒" * len(shade), style="grey50")
    line.append("░" * (width - len(filled) - len(shade)), style="grey27")
    line.append(f" {fmt_bytes(used)}/{fmt_bytes(total)}")
    if note:
        line.append(f" {note}", style="dim")
    return line


class MemoryPanel(Static):
    """Rendered from ``ConsoleModel.memory()`` and the overview's queue: bars for the host, each
    job (RSS of its reservation) and each GPU and GPU process, then the numbers and the queue."""

    def show(self, model: ConsoleModel) -> None:
        self.update(self.render_memory(model))

    def render_memory(self, model: ConsoleModel) -> RenderableType:
        mem = model.memory()
        snap = mem["snapshot"]
        width = max(10, min(40, (self.size.width or 80) - 52))
        parts: list[RenderableType] = []
        reserved = sum(max(a.reservation - (a.rss or 0), 0) for a in mem["running"])
        parts.append(meter("host", snap.total - snap.available, snap.total, width,
                           f"used +{fmt_bytes(reserved)} reserved ▒", extra=reserved))
        head = Text()
        frac = snap.available / snap.total if snap.total else 0
        head.append(f"available {fmt_bytes(snap.available)} ({100 * frac:.0f}% free)",
                    style="green" if frac > 0.25 else "bold red")
        if snap.psi is not None:
            some, full = snap.psi.get("some", 0.0), snap.psi.get("full", 0.0)
            head.append(f" · PSI some {some:.1f}% full {full:.1f}% (avg10)", style="bold red" if full > 5 else "")
        else:
            head.append(" · PSI not available", style="dim")
        parts.append(head)
        for a in mem["running"]:
            parts.append(meter(a.job_id, a.rss or None, a.reservation or None, width,
                               f"RSS/reserved, peak {fmt_bytes(a.peak_rss or None)}"))
        per_pid = {pid: b for g in snap.gpus for pid, b in g.per_process.items()}
        jobs_by_pid = {(a.identity or {}).get("pid"): a.job_id for a in mem["running"]}
        for i, g in enumerate(snap.gpus):
            if g.unified:
                parts.append(Text(f"GPU{i} {g.name}: unified memory (shares system memory; MemAvailable is the budget)",
                                  style="cyan"))
                continue
            parts.append(meter(f"GPU{i}", g.used, g.total, width, g.name))
            for pid, used in sorted(g.per_process.items(), key=lambda kv: -kv[1]):
                parts.append(meter(f"  {jobs_by_pid.get(pid, f'pid {pid}')}", used, g.total, width, f"on GPU{i}"))
        headroom = mem["headroom"]
        parts.append(Text(f"admission headroom {fmt_bytes(max(headroom, 0))} (margin {fmt_bytes(mem['margin'])}"
                          + (f", budget {fmt_bytes(mem['budget'])}" if mem["budget"] else "") + ")",
                          style="bold" if headroom > 0 else "bold red"))
        jobs = _table("job", "RSS", "peak", "reserved", "GPU")
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
