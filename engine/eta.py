"""A running stage's ETA: start-up + progress units + tail.

A stage's wall time is not only its progress units: imports, loading a 15 GB checkpoint and CUDA
graph capture come before the first unit, saving and publishing after the last. In a 10-hour
job they are noise; in a one-minute rehearsal stage they are most of it. So the ETA is

* before the first unit: max(start-up - elapsed, 0) + total x unit time + tail;
* between the first and the last unit: units left / rate - time since the last event (at least the
  units after the burst under way) + tail, the
  time per unit taken from events AFTER the first unit's burst only (never across the start-up gap;
  events arriving together are one burst, so a batch of 41 problems reported at once is not a rate),
  as the median interval (robust to the first steps' warm-up), blended in seconds per unit with the
  measured unit time, a prior that the observed units outweigh as they accumulate;
* after the last unit: the tail left (at least ``FINISHING_S``: the stage is finishing).

Start-up, unit time and tail are measured (``engine.measure`` folds them from a run's job logs
into ``engine/pipelines/data/<name>-measured.json``, whose ``pipeline`` names the spec they were
measured for, each stage's runs kept: the prior is their median); a stage without its own
measurement takes the median of its kind's in that file. Units come in bursts (a batch of 4
prompts reported at once): the ETA counts whole bursts, a partial last batch at a full one's time.
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
PRIOR_SHARE = 2.0  # the measured unit time weighs as twice the units it was measured on (a short job's few intervals are noisy)
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
    step: float = 1.0  # units per progress event (a batch of 4 prompts): a partial last batch costs a whole one


def phases(started: float | None, finished: float | None,
           progress: Iterable[tuple[float, float]]) -> dict[str, float] | None:
    """A finished attempt's start-up, unit time, tail (seconds) and step (units per burst), as
    ``estimate`` uses them: the first unit's burst ends the start-up (less the units it carries,
    at the unit time); a burst of fewer units than the step (the last, partial batch) costs a
    whole step's time, so the unit time is per unit of a full batch."""
    pts = _bursts(progress)
    pts = [p for p in pts if p[1] > 0]
    if started is None or finished is None or not pts:
        return None
    (t1, d1), (tn, _) = pts[0], pts[-1]
    step = max([d1, *(b - a for (_, a), (_, b) in zip(pts, pts[1:], strict=False))])
    full = sum(_whole(b - a, step) for (_, a), (_, b) in zip(pts, pts[1:], strict=False))
    unit = (tn - t1) / full if full else (t1 - started) / d1
    return {"startup_s": round(max(t1 - started - d1 * unit, 0.0), 2), "unit_s": round(unit, 4),
            "tail_s": round(max(finished - tn, 0.0), 2), "step": step}


def _whole(units: float, step: float) -> float:
    """``units`` rounded up to whole bursts of ``step``: what they cost at a full batch's time."""
    return math.ceil(units / step - 1e-9) * step if step > 1 else units


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


def _observed(ivs: list[tuple[float, float]], step: float) -> tuple[float, float]:
    """Seconds per unit over the intervals (each at whole batches) and their relative
    uncertainty. The median interval, not the mean: in a short job the first steps' warm-up
    (allocator growth, autotuning: 3 s against 0.5 s on the H200) or one batch slowed by a
    neighbour are a large share of the few intervals seen, and the prior already holds what a
    whole run's pauses cost. The uncertainty: the spread of the interval times over the square
    root of their number, and at least 1/n after n intervals."""
    per = [dt / _whole(dd, step) for dt, dd in ivs]
    mid = statistics.median(per)
    spread = statistics.pstdev(per) if len(per) > 1 else 0.0
    return mid, min(1.0, max(spread / mid / math.sqrt(len(per)), 1 / len(per)))


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
        eta = max(p.startup_s - elapsed, 0.0) + _whole(total, p.step) / prior + p.tail_s
        return Eta(prior, eta, eta * PRIOR_REL)
    since = max(0.0, now - units[-1][0])
    if a.done >= total:  # the last unit is done: saving, publishing
        return Eta(None, max(p.tail_s - since, FINISHING_S), 0.0)
    # the job's own batch: its largest burst since the first (a profile measured with other batches
    # would round the units left wrongly), before any interval the first unit's burst
    step = max(dd for _, dd in ivs) if ivs else next((d for _, d in _bursts(a.progress) if d > 0), 1.0)
    if ivs:
        per, rel = _observed(ivs, step)
        if p.unit_s:  # blended as seconds per unit, so a prior 12x too fast cannot hold the ETA down
            w = _seen(a) / (_seen(a) + max(1.0, PRIOR_SHARE * (p.units or total)))
            per, rel = w * per + (1 - w) * p.unit_s, w * rel + (1 - w) * PRIOR_REL
    elif p.unit_s:
        per, rel = p.unit_s, PRIOR_REL
    else:
        return Eta()
    left = _whole(total - a.done, step)  # the burst under way may be overdue, the ones after it are not
    eta = max(left * per - since, max(left - step, 0.0) * per) + p.tail_s
    return Eta(1 / per, eta, eta * rel)


def prior_of(m: dict[str, Any]) -> Profile:
    """A stage's phases as the median of its measured runs (one run slowed by a neighbour on the
    device moves the prior half as much with two runs, not at all from three), its step the
    largest and its units the latest run's."""
    rs = [r for r in (m.get("runs") or [m]) if isinstance(r.get("startup_s"), (int, float))] or [m]

    def med(key: str) -> float:
        return statistics.median(float(r.get(key) or 0.0) for r in rs)

    return Profile(med("startup_s"), med("unit_s") or None, med("tail_s"), m.get("units") or None,
                   max(float(r.get("step") or 1.0) for r in rs))


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
                out[name] = prior_of(m)
                continue
            kin = [r for r in rec.values() if r.get("kind") == entry.kind]
            if kin:
                out[name] = Profile(statistics.median(r["startup_s"] for r in kin), None,
                                    statistics.median(float(r.get("tail_s") or 0.0) for r in kin))
        return out
    return {}
