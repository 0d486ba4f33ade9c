"""Text pictures for the console: progress bars, sparklines, memory bars.

Plain strings of block characters, drawn into a label or a line of the DAG (one line, no
widget of its own: a DAG row or a detail pane redraws cheaply). Nothing is drawn where
there is no data: an empty series gives an empty string, never a row of full blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from engine.text import fmt_duration

TICKS = "▁▂▃▄▅▆▇█"


def bar(frac: float | None, width: int) -> tuple[str, str]:
    """(filled, empty) parts of a bar ``width`` cells wide; eighths at the edge."""
    if frac is None or width <= 0:
        return "", ""
    frac = min(max(frac, 0.0), 1.0)
    eighths = round(frac * width * 8)
    full, part = divmod(eighths, 8)
    filled = "█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else "")
    return filled, "░" * (width - len(filled))


def sparkline(values: Sequence[float], width: int) -> str:
    """The series squeezed (bucket means) or kept to ``width`` cells; flat series draw low."""
    vals = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not vals or width <= 0:
        return ""
    if len(vals) > width:
        step = len(vals) / width
        vals = [sum(chunk) / len(chunk) for chunk in
                (vals[int(i * step):max(int((i + 1) * step), int(i * step) + 1)] for i in range(width))]
    lo, hi = min(vals), max(vals)
    if hi - lo <= 1e-12 * max(abs(hi), 1.0):
        return TICKS[0] * len(vals)
    return "".join(TICKS[min(7, int((v - lo) / (hi - lo) * 7.999))] for v in vals)


def coarse(seconds: float | None) -> str:
    """Minutes at most (a label that changes every second repaints every second)."""
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return fmt_duration(seconds)  # hours and minutes
    return f"{int(seconds // 60)}m" if seconds >= 60 else "<1m"


def eta_text(eta_s: float | None, pm_s: float | None) -> str:
    """``~32m ±3m``; only the estimate while its uncertainty is under a minute."""
    if eta_s is None:
        return ""
    if eta_s < 60:
        return "<1m"
    pm = f" ±{coarse(pm_s)}" if pm_s and pm_s >= 60 else ""
    return f"~{coarse(eta_s)}{pm}"
