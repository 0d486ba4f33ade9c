"""Durations and sizes as people read them: one spelling for `pmat status`, the console and the
overview (a foundation module, so that every floor above can use it)."""

from __future__ import annotations


def fmt_duration(seconds: float | None) -> str:
    """``"-"`` for unknown, else the two largest units: 45s, 3m07s, 2h05m, 1d03h."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def fmt_bytes(n: float | None) -> str:
    """``"-"`` for unknown, else binary units: whole B and KB, one decimal from MB up."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
