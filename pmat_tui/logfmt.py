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

from engine.text import fmt_bytes, fmt_duration

QUIET_KINDS = frozenset({"resource"})  # shown only with --all (console: the `v` key)
FIRST_METRICS = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "learning_rate", "grad_norm",
                 "tokens_per_s")  # a step's line leads with these; the rest follow in logged order
BRIEF = {  # kind -> the fields a person reads (--raw and the console's `v` show every field)
    "job_started": ("job_id", "attempt", "pid"),
    "job_finished": ("outcome", "error", "peak_rss", "peak_gpu"),
    "artifact": ("name", "bytes", "sha256", "path"),
    "checkpoint": ("step", "path"),
}
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
    if kind == "result" and isinstance(ev.get("results"), list):
        return f"{len(ev['results'])} result(s) recorded in the ledger"
    keys = BRIEF.get(str(kind)) or [k for k in ev if k not in ("ts", "kind")]
    shown = {k: ev[k] for k in keys if ev.get(k) is not None}
    if isinstance(shown.get("sha256"), str):
        shown["sha256"] = shown["sha256"][:12]
    return " ".join(f"{k}={fmt_value(k, v)}" for k, v in shown.items())


def metrics_text(metrics: list[dict[str, Any]]) -> str:
    """``loss 0.6931 · rewards/margins 0.18 · ...``: the usual ones first."""
    rank = {name: i for i, name in enumerate(FIRST_METRICS)}
    ordered = sorted(metrics, key=lambda m: rank.get(str(m.get("name")), len(rank)))
    return " · ".join(f"{m.get('name')} {fmt_value('value', m.get('value'))}" for m in ordered)


class _Step:
    """The events of one training step: its progress event and its metrics."""

    def __init__(self, step: Any) -> None:
        self.step = step
        self.progress: dict[str, Any] | None = None
        self.metrics: list[dict[str, Any]] = []

    def line(self) -> tuple[str, str]:
        first = self.progress or self.metrics[0]
        if not self.metrics:
            return "progress", f"{clock(first.get('ts'))} {'progress':<12} {describe(first)}"
        if self.progress is None:  # metrics logged at a step after its progress (a run's summary)
            return "metrics", f"{clock(first.get('ts'))} {'metrics':<12} step {self.step}  {metrics_text(self.metrics)}"
        return "step", f"{clock(first.get('ts'))} {'step':<12} {describe(self.progress)}  {metrics_text(self.metrics)}"


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
