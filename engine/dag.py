"""The stage DAG: topological order, critical path, and why a stage is not running."""

from __future__ import annotations

from dataclasses import dataclass
from graphlib import TopologicalSorter

from engine.spec import GIB, PipelineSpec
from engine.state import PipelineState

TIE_DIGITS = 2  # chain lengths that agree to two significant digits tie


def topo_order(spec: PipelineSpec) -> list[str]:
    """Stages in dependency order, ties broken by their order in the spec."""
    rank = {name: i for i, name in enumerate(spec.stages)}
    ts = TopologicalSorter({s: spec.deps(s) for s in spec.stages})
    ts.prepare()
    order: list[str] = []
    while ts.is_active():
        ready = sorted(ts.get_ready(), key=rank.__getitem__)
        order.extend(ready)
        ts.done(*ready)
    return order


def learned_durations(spec: PipelineSpec, state: PipelineState | None) -> dict[str, float]:
    """Hours per stage: a stage's own measured run, else its estimate scaled by how
    far off the estimates of its kind have been (learned once the kind has run)."""
    measured: dict[str, float] = {}
    ratios: dict[str, list[float]] = {}
    if state is not None:
        for name, st in state.stages.items():
            entry = spec.stages.get(name)
            ok = [a for a in st.attempts if a.outcome == "ok" and a.started_at is not None and a.finished_at is not None]
            if entry is None or not ok:
                continue
            hours = (ok[-1].finished_at - ok[-1].started_at) / 3600
            measured[name] = hours
            ratios.setdefault(entry.kind, []).append(hours / entry.duration_h)
    out = {}
    for name, entry in spec.stages.items():
        if name in measured:
            out[name] = measured[name]
        elif entry.kind in ratios:
            r = ratios[entry.kind]
            out[name] = entry.duration_h * sum(r) / len(r)
        else:
            out[name] = entry.duration_h
    return out


def critical_path(
    spec: PipelineSpec,
    state: PipelineState | None = None,
    *,
    remaining: bool = False,
    left_h: dict[str, float] | None = None,
) -> tuple[list[str], float]:
    """The longest chain of stages by (learned) duration; hours along it.

    With ``remaining``, finished stages count zero and ``left_h`` gives the hours still to go
    of stages under way (their ETA): the path that still bounds the finish. Chain lengths are
    compared at ``TIE_DIGITS`` significant digits and ties go to the stage first in the spec,
    so ETA jitter does not make the path hop between branches from one refresh to the next.
    """
    dur = learned_durations(spec, state)
    if remaining and state is not None:
        for name, st in state.stages.items():
            if st.done and name in dur:
                dur[name] = 0.0
        dur.update({k: v for k, v in (left_h or {}).items() if k in dur})
    rank = {name: i for i, name in enumerate(spec.stages)}
    best: dict[str, tuple[float, str | None]] = {}

    def longest(names: list[str]) -> str:
        return max(names, key=lambda d: (float(f"{best[d][0]:.{TIE_DIGITS}g}"), -rank[d]))

    for s in topo_order(spec):
        deps = spec.deps(s)
        prev = longest(deps) if deps else None
        best[s] = ((best[prev][0] if prev else 0.0) + dur[s], prev)
    if not best:
        return [], 0.0
    end = longest(list(best))
    path = [end]
    while (p := best[path[-1]][1]) is not None:
        path.append(p)
    return path[::-1], best[end][0]


def expand_targets(spec: PipelineSpec, targets: list[str]) -> set[str] | str:
    """Stages named by stage names, work item ids or 'all', with their upstream; or the first
    unknown name (the supervisor's rule, for clients that check before sending)."""
    chosen: list[str] = []
    for t in targets:
        if t == "all":
            chosen += list(spec.stages)
        elif t in spec.stages:
            chosen.append(t)
        elif t in spec.work_items:
            chosen += spec.stages_of(t)
        else:
            return t
    closure: set[str] = set()
    while chosen:
        s = chosen.pop()
        if s not in closure:
            closure.add(s)
            chosen.extend(spec.deps(s))
    return closure


def work_item_order(spec: PipelineSpec) -> list[str]:
    ts = TopologicalSorter({k: v.depends_on for k, v in spec.work_items.items()})
    return list(ts.static_order())


@dataclass(frozen=True)
class Blocker:
    """Why a stage is not running; ``kind`` is machine-readable, ``text`` for people."""

    kind: str  # done | running | waiting_on | needs_approval | memory | failed_dependency | failed | cancelled | not_requested | queued
    text: str


def why_not_running(
    spec: PipelineSpec,
    state: PipelineState,
    stage: str,
    *,
    approved: bool = False,
    headroom: int | None = None,
    need: int | None = None,
) -> Blocker:
    """The reason ``stage`` is not running now (or ``running``/``done``)."""
    st = state.stages.get(stage)
    status = st.status if st else "pending"
    if status in ("running", "done"):
        return Blocker(status, status)
    if status == "cancelled":
        return Blocker("cancelled", "cancelled (retry to run again)")
    if status in ("failed", "crashed") and st and st.latest:
        return Blocker(status, f"{status}: {st.latest.error or 'no reason recorded'}")
    for dep in spec.deps(stage):
        dst = state.stages.get(dep)
        if dst and dst.status in ("failed", "crashed", "cancelled"):
            return Blocker("failed_dependency", f"dependency {dep} {dst.status}")
    pending = [d for d in spec.deps(stage) if not (state.stages.get(d) and state.stages[d].done)]
    if pending:
        return Blocker("waiting_on", f"waiting on {', '.join(pending)}")
    if spec.stages[stage].approval == "required" and not approved:
        return Blocker("needs_approval", "needs approval")
    if need is not None and headroom is not None and need > headroom:
        return Blocker("memory", f"waiting for memory: needs {need / GIB:.1f} GB, {max(headroom, 0) / GIB:.1f} GB free after reservations")
    if st is None or not st.requested:
        return Blocker("not_requested", "ready (not requested: pmat run to start)")
    return Blocker("queued", "ready")
