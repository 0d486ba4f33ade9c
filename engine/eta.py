"""A running stage's ETA: start-up + progress units + tail.

A stage's wall time is not only its progress units: imports, loading a 15 GB checkpoint and CUDA
graph capture come before the first unit, saving and publishing after the last. In a 10-hour
job they are noise; in a one-minute rehearsal stage they are most of it. So the ETA is

* before the first unit: max(start-up - elapsed, 0) + total x unit time + tail;
* between the first and the last unit: units left / rate - time since the last event (at least the
  units after the burst under way) + tail, the
  rate taken from events AFTER the first unit's burst only (never across the start-up gap; events
  arriving together are one burst, so a batch of 41 problems reported at once is not a rate), the
  measured unit time serving as a prior that the observed rate outweighs as units accumulate;
* after the last unit: the tail left (at least ``FINISHING_S``: the stage is finishing).

Start-up, unit time and tail are measured (``engine.measure`` folds them from a run's job logs
into ``engine/pipelines/data/<name>-measured.json``, whose ``pipeline`` names the spec they were
measured for); a stage without its own measurement takes the median of its kind's in that file.
Without a measurement the ETA is the units' alone, as before.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine.spec import PipelineSpec
from engine.state import Attempt, StageState

DATA_DIR = Path(__file__).parent / "pipelines" / "data"
EW_TAU_MIN_S = 10.0  # the smoothing time constant: at least this, else 30% of the progress seen
EW_TAU_SHARE = 0.3
BURST_S = 0.05  # progress events closer than this arrived together: one burst, not a rate
PRIOR_SHARE = 0.5  # the measured unit time weighs as this share of the units it was measured on
PRIOR_REL = 0.2  # the uncertainty of an ETA from measurements alone (relative)
FINISHING_S = 1.0  # the least ETA once the last unit is done


@dataclass(frozen=True)
class Eta:
    """A running stage's rate (units/s), seconds to go and their uncertainty (seconds)."""

    rate: float | None = None
    eta_s: float | None = None
    pm_s: float | None = None


@dataclass(frozen=True)
class Profile:
    """A stage's measured phases (seconds): before its first unit, per unit, after its last."""

    startup_s: float = 0.0
    unit_s: float | None = None  # None: the work differs from what was measured (another pipeline)
    tail_s: float = 0.0
    units: float | None = None  # the units measured: the total before the job reports its own


def phases(started: float | None, finished: float | None,
           progress: Iterable[tuple[float, float]]) -> dict[str, float] | None:
    """A finished attempt's start-up, unit time and tail (seconds), as ``estimate`` uses them:
    the first unit's burst ends the start-up (less the units it carries, at the unit time)."""
    pts = _bursts(progress)
    pts = [p for p in pts if p[1] > 0]
    if started is None or finished is None or not pts:
        return None
    (t1, d1), (tn, dn) = pts[0], pts[-1]
    unit = (tn - t1) / (dn - d1) if dn > d1 else (t1 - started) / dn
    return {"startup_s": round(max(t1 - started - d1 * unit, 0.0), 2), "unit_s": round(unit, 4),
            "tail_s": round(max(finished - tn, 0.0), 2)}


def _bursts(progress: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Progress points with events closer than ``BURST_S`` merged (the last one's time and count);
    a count that goes back (a restarted phase) starts over."""
    out: list[tuple[float, float]] = []
    for t, d in progress:
        if out and d < out[-1][1]:
            out = []
        if out and t - out[-1][0] < BURST_S:
            out[-1] = (t, d)
        else:
            out.append((t, d))
    return out


def _intervals(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(seconds, units) between bursts after the first unit's; a pause with no progress joins
    the next interval."""
    pts = _bursts(points)
    first = next((i for i, (_, d) in enumerate(pts) if d > 0), None)
    if first is None:
        return []
    out: list[tuple[float, float]] = []
    acc_t = 0.0
    for (t0, d0), (t1, d1) in zip(pts[first:], pts[first + 1:], strict=False):
        acc_t += max(t1 - t0, 0.0)
        if d1 > d0 and acc_t > 0:
            out.append((acc_t, d1 - d0))
            acc_t = 0.0
    return out


def _seen(a: Attempt) -> float:
    """Units done since the first unit's burst (all of them once that burst left the history)."""
    whole = a.progress.maxlen is None or len(a.progress) < a.progress.maxlen
    first = next((d for _, d in _bursts(a.progress) if d > 0), 0.0) if whole else 0.0
    return max(a.done - first, 0.0)


def _observed(ivs: list[tuple[float, float]]) -> tuple[float, float]:
    """An exponentially weighted rate (units/s) over the intervals and its relative uncertainty:
    the weighted spread of the interval rates over the square root of their effective number,
    and at least 1/n after n intervals."""
    tau = max(EW_TAU_MIN_S, EW_TAU_SHARE * sum(dt for dt, _ in ivs))
    ew_t = ew_d = w1 = w2 = wr = wr2 = 0.0  # decayed sums: time, units, weights, weights², weighted rates, rates²
    for dt, dd in ivs:
        decay = math.exp(-dt / tau)
        ew_t, ew_d = ew_t * decay + dt, ew_d * decay + dd
        w1, w2 = w1 * decay + dt, w2 * decay * decay + dt * dt
        wr, wr2 = wr * decay + dd, wr2 * decay + dd * dd / dt
    rate = ew_d / ew_t
    spread = math.sqrt(max(wr2 / w1 - (wr / w1) ** 2, 0.0))
    n_eff = w1 * w1 / w2
    return rate, min(1.0, max(spread / rate / math.sqrt(n_eff), 1 / len(ivs)))


def estimate(st: StageState, now: float, profile: Profile | None = None) -> Eta:
    """Rate, seconds to go and their uncertainty for a running stage (the module's docstring
    says how); no ETA without a total, or without a measurement before a rate is observed."""
    a = st.latest
    p = profile or Profile()
    total = a.total or p.units if a is not None else None
    if a is None or not total or a.outcome is not None:
        return Eta()
    prior = 1 / p.unit_s if p.unit_s else None
    ivs = [iv for b in st.attempts[-2:] for iv in _intervals(list(b.progress))]
    units = [pt for pt in a.progress if pt[1] > 0]
    if not units:  # still starting up
        if prior is None:
            return Eta()
        elapsed = max(0.0, now - (a.started_at or a.launched_at or now))
        eta = max(p.startup_s - elapsed, 0.0) + total / prior + p.tail_s
        return Eta(prior, eta, eta * PRIOR_REL)
    since = max(0.0, now - units[-1][0])
    if a.done >= total:  # the last unit is done: saving, publishing
        return Eta(None, max(p.tail_s - since, FINISHING_S), 0.0)
    if ivs:
        rate, rel = _observed(ivs)
        if prior is not None:
            w = _seen(a) / (_seen(a) + max(1.0, PRIOR_SHARE * (p.units or total)))
            rate, rel = w * rate + (1 - w) * prior, w * rel + (1 - w) * PRIOR_REL
    elif prior is not None:
        rate, rel = prior, PRIOR_REL
    else:
        return Eta()
    left = total - a.done  # the burst under way may be overdue, the ones after it are not
    step = ivs[-1][1] if ivs else units[-1][1]
    eta = max(left / rate - since, max(left - step, 0.0) / rate) + p.tail_s
    return Eta(rate, eta, eta * rel)


@lru_cache(maxsize=8)
def _measured(path: Path, mtime: float) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def profiles(spec: PipelineSpec, data_dir: Path = DATA_DIR) -> dict[str, Profile]:
    """Each stage's measured phases for ``spec`` from the measured file naming it; stages it did
    not measure take the median start-up and tail of their kind there (no unit time: their work
    was not measured)."""
    for path in sorted(data_dir.glob("*-measured.json")):
        try:
            data = _measured(path, path.stat().st_mtime)
        except OSError:
            continue
        if data.get("pipeline") != spec.name:
            continue
        rec = {n: m for n, m in (data.get("stages") or {}).items()
               if isinstance(m, dict) and isinstance(m.get("startup_s"), (int, float))}
        out: dict[str, Profile] = {}
        for name, entry in spec.stages.items():
            m = rec.get(name)
            if m is not None:
                out[name] = Profile(float(m["startup_s"]), m.get("unit_s") or None, float(m.get("tail_s") or 0.0),
                                    m.get("units") or None)
                continue
            kin = [r for r in rec.values() if r.get("kind") == entry.kind]
            if kin:
                out[name] = Profile(statistics.median(r["startup_s"] for r in kin), None,
                                    statistics.median(float(r.get("tail_s") or 0.0) for r in kin))
        return out
    return {}
