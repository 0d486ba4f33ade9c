"""Event logs as lines a person reads: shared by ``pmat logs`` and the console's log view.

Plain Python (no Textual, no Rich): ``pmat logs`` imports it without the console. A
training step's metrics (a dozen events with 17-digit floats) become one line; sizes,
durations and counts are humanised; resource ticks are hidden unless asked for.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

from engine.cli._common import fmt_bytes, fmt_duration

QUIET_KINDS = frozenset({"resource"})  # shown only with --all (console: the `a` key)
BYTE_KEYS = ("rss", "peak_rss", "gpu", "bytes", "reservation", "memory", "available", "need", "headroom")
SECOND_KEYS = ("wall_s", "elapsed_s", "seconds", "duration_s", "grace_s")


def fmt_value(key: str, v: Any) -> str:
    """One field's value for people: bytes as MB/GB, seconds as 1m05s, 4 significant digits."""
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, int | float):
        if key in BYTE_KEYS or key.endswith("_bytes"):
            return fmt_bytes(v)
        if key in SECOND_KEYS or key.endswith("_s"):
            return fmt_duration(v)
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    if isinstance(v, str):
        return v
    return json.dumps(v, default=str, separators=(",", ":"))


def clock(ts: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if isinstance(ts, int | float) else "--:--:--"


def describe(ev: dict[str, Any]) -> str:
    """The body of one event after its kind: the fields that say something, humanised."""
    kind = ev.get("kind")
    if kind == "progress":
        done, total, unit = ev.get("done"), ev.get("total"), ev.get("unit", "")
        if isinstance(done, int | float) and isinstance(total, int | float) and total:
            return f"{fmt_value('done', done)}/{fmt_value('total', total)} {unit} ({100 * done / total:.0f}%)"
    if kind == "metric":
        step = ev.get("step")
        return f"{ev.get('name')} {fmt_value('value', ev.get('value'))}" + (f" (step {step})" if step is not None else "")
    return " ".join(f"{k}={fmt_value(k, v)}" for k, v in ev.items() if k not in ("ts", "kind"))


class _Step:
    """The events of one training step: its progress event and its metrics."""

    def __init__(self, step: Any) -> None:
        self.step = step
        self.progress: dict[str, Any] | None = None
        self.metrics: list[dict[str, Any]] = []

    def line(self) -> tuple[str, str]:
        first = self.progress or self.metrics[0]
        head = describe(self.progress) if self.progress else f"step {self.step}"
        if not self.metrics:
            return "progress", f"{clock(first.get('ts'))} {'progress':<12} {head}"
        body = " · ".join(f"{m.get('name')} {fmt_value('value', m.get('value'))}" for m in self.metrics)
        return "step", f"{clock(first.get('ts'))} {'step':<12} {head}  {body}"


def human_lines(events: Iterable[dict[str, Any]], *, show_all: bool = False) -> Iterator[tuple[str, str]]:
    """(kind, ``HH:MM:SS kind  text``) per line. A step's progress event and the metrics logged
    at that step make one line (kind ``step``); resource ticks only with ``show_all``."""
    group: _Step | None = None
    for ev in events:
        kind = str(ev.get("kind", "?"))
        if kind in QUIET_KINDS and not show_all:
            continue
        step = ev.get("step") if kind == "metric" else ev.get("done") if kind == "progress" else None
        if step is not None:
            same = group is not None and group.step == step and (kind == "metric" or group.progress is None)
            if not same:
                if group is not None:
                    yield group.line()
                group = _Step(step)
            if kind == "metric":
                group.metrics.append(ev)
            else:
                group.progress = ev
            continue
        if group is not None:
            yield group.line()
            group = None
        yield kind, f"{clock(ev.get('ts'))} {kind:<12} {describe(ev)}"
    if group is not None:
        yield group.line()
