"""Formatting shared by the console's widgets."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.text import Text

from engine.jsonl import parse
from engine.text import fmt_bytes, fmt_duration
from pmat_tui.logfmt import describe, metrics_text

__all__ = ["fmt_bytes", "fmt_duration", "fmt_clock", "fmt_rate", "fmt_num", "event_text", "short_hash"]

KIND_STYLE = {
    "job_started": "bold green",
    "job_finished": "bold",
    "progress": "cyan",
    "step": "cyan",
    "metric": "blue",
    "warning": "bold yellow",
    "artifact": "green",
    "checkpoint": "magenta",
    "resource": "dim",
    "crashed": "bold red",
    "command_rejected": "red",
    "approval_granted": "bold cyan",
}


def fmt_clock(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


def fmt_num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def fmt_rate(per_h: float | None, unit: str) -> str:
    if not per_h:
        return "-"
    return f"{per_h:,.0f} {unit}/h" if per_h >= 100 else f"{per_h:.3g} {unit}/h"


def short_hash(h: str | None, n: int = 12) -> str:
    if not h:
        return "-"
    return h[:n + 3] if h.startswith("fp:") else h[:n]


def parse_event(raw: bytes) -> dict[str, Any] | None:
    ev = parse(raw)
    return ev if isinstance(ev, dict) else None


def event_text(raw: bytes, metrics: list[dict[str, Any]] | None = None, *, raw_fields: bool = False) -> Text:
    """One log line as ``HH:MM:SS kind  text`` for people (``pmat_tui.logfmt``), with the step's
    ``metrics`` appended to a progress line; ``raw_fields``: every field as written.
    Lines that are not JSON stay raw."""
    ev = parse_event(raw)
    if ev is None:
        return Text(raw.decode(errors="replace"), style="red")
    kind = "step" if metrics else str(ev.get("kind", "?"))
    out = Text(fmt_clock(ev.get("ts")) + " ", style="dim")
    out.append(f"{kind:<12} ", style=KIND_STYLE.get(kind, "bold"))
    if raw_fields:
        out.append(" ".join(f"{k}={json.dumps(v, default=str, separators=(',', ':'))}"
                            for k, v in ev.items() if k not in ("ts", "kind")))
        return out
    out.append(describe(ev))
    if metrics:
        out.append("  " + metrics_text(metrics), style="blue")
    return out
