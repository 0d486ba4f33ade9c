"""Per-stage measurements of a run, stored as data the spec's memory_gb/duration_h derive from.

A ``Monitor`` thread samples, four times a second, every running job's process tree: host RSS
(/proc) and device memory (NVML per process: what the driver holds, the caching allocator's
reserve and the CUDA context included), the sum of the running jobs' reservations (admission
must keep it within the budget) and the disk's free space; once a second also the console's ETA
for the stage (what a user reads; building it costs more). A short peak, such as a sandbox pool
alive for a second or two, is seen several times instead of once or not at all.

``report`` folds the samples and the journal into one record per stage: peak GPU, peak RSS,
footprint (their sum: what unified memory would hold), disk written, wall time, throughput,
and how far the console's ETA was from the truth. ``derive`` turns a report into the
declarations: memory_gb = footprint x 1.15 rounded up to 0.05 GiB (the spec's memory_gb is GiB
to the supervisor; so that the measured peak <= declared <= 1.25 x measured, and a rerun whose
peak grows up to 15% still fits), duration_h = wall time; over several folded runs (``fold``
keeps them) the largest footprint, capped at 1.25 x the smallest where that still covers the
largest. A run whose record carries ``memory_excluded`` (the reason, e.g. its code has changed
since) still times the stage but no longer sizes it. Each stage's start-up, unit time, tail and
step (``engine.eta.phases``; the median of the runs) are what the console's ETA adds to its
progress units when the same pipeline runs again.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

from engine.eta import phases
from engine.jsonl import append_jsonl, read_objects
from engine.resume import free_bytes
from engine.sdk.run import rss_bytes
from engine.spec import PipelineSpec
from engine.state import PipelineState
from engine.workspace import Workspace, atomic_write_json

GIB = 1 << 30  # the unit of the spec's memory_gb (the supervisor admits in GiB)
HEADROOM = 1.15  # declared / measured: a rerun's peak may grow 15%; <= 1.25 even after rounding up
SAMPLE_S = 0.25  # seconds between memory samples
ETA_EVERY = 4  # samples: the console's ETA once a second
PER_GIB = 20  # declarations are whole twentieths of a GiB (0.05): fine enough for a 0.6 GiB stage


def _children(pid: int) -> list[int]:
    try:
        import psutil

        return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except Exception:  # noqa: BLE001 - a process gone between two reads
        return [pid]


def gpu_by_pid() -> dict[int, int]:
    """Device bytes per process over every GPU (empty without NVML or on unified memory)."""
    from engine.memory import gpu_info

    out: dict[int, int] = {}
    for g in gpu_info():
        for pid, used in g.per_process.items():
            out[pid] = out.get(pid, 0) + used
    return out


class Monitor(threading.Thread):
    """Samples the running jobs of a workspace into ``<ws>/rehearsal/samples.jsonl``."""

    def __init__(self, ws: Workspace, spec: PipelineSpec) -> None:
        super().__init__(daemon=True)
        self.ws, self.spec = ws, spec
        self.path = ws.root / "rehearsal" / "samples.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stop = threading.Event()

    def sample(self, state: PipelineState, with_eta: bool = True) -> dict[str, Any]:
        from engine.overview import build_overview

        state.refresh()
        etas = {r.stage: (r.eta_s, r.done, r.total) for r in build_overview(self.ws, self.spec, state).rows
                if r.status == "running"} if with_eta else {}
        gpu = gpu_by_pid()
        jobs = {}
        for a in state.running():
            pid = (a.identity or {}).get("pid")
            if not pid:
                continue
            tree = _children(int(pid))
            eta = etas.get(a.stage, (None, None, None))
            jobs[a.stage] = {"rss": sum(rss_bytes(p) for p in tree), "gpu": sum(gpu.get(p, 0) for p in tree),
                             "reservation": a.reservation, "eta_s": eta[0], "done": eta[1], "total": eta[2]}
        return {"t": time.time(), "jobs": jobs, "disk_free": free_bytes(self.ws.root),
                "reserved": sum(j["reservation"] or 0 for j in jobs.values()),
                "footprint": sum(j["rss"] + j["gpu"] for j in jobs.values())}

    def run(self) -> None:
        state = PipelineState(self.ws)
        n = 0
        while not self.stop.wait(SAMPLE_S):
            try:
                append_jsonl(self.path, [self.sample(state, with_eta=n % ETA_EVERY == 0)])
            except Exception as exc:  # noqa: BLE001 - a failed sample is a gap, not the end
                append_jsonl(self.path, [{"t": time.time(), "error": repr(exc)}])
            n += 1


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The sampler's records (a torn last line or a damaged one is skipped: samples are best effort)."""
    return [rec for rec in read_objects(path, []) if "jobs" in rec]


def _eta_error(points: list[tuple[float, float | None, float | None, float | None]], end: float) -> float | None:
    """Relative error of the console's ETA, read when a quarter to half of the work was done
    (the ETA a user plans by): |predicted end - actual end| / actual remaining time."""
    errs = []
    for t, eta, done, total in points:
        if eta is None or not total or done is None or not 0.25 <= done / total <= 0.5:
            continue
        actual = end - t
        if actual > 0:
            errs.append(abs(eta - actual) / actual)
    return max(errs) if errs else None


def report(ws: Workspace, spec: PipelineSpec) -> dict[str, Any]:
    """One record per stage from the journal, the job logs and the monitor's samples."""
    state = PipelineState(ws)
    state.refresh()
    samples = read_samples(ws.root / "rehearsal" / "samples.jsonl")
    stages: dict[str, Any] = {}
    for name, entry in spec.stages.items():
        a = state.stage(name).latest
        if a is None or a.outcome != "ok":
            stages[name] = {"kind": entry.kind, "status": state.stage(name).status}
            continue
        mine = [s["jobs"][name] for s in samples if name in s["jobs"]]
        gpu = max((j["gpu"] for j in mine), default=0)
        rss = max([a.peak_rss, *(j["rss"] for j in mine)])
        start, end = a.started_at or a.launched_at, a.finished_at
        wall = (end - start) if start and end else None
        written = sum(int(v.get("bytes") or 0) for v in a.artifacts.values())
        stages[name] = {
            "kind": entry.kind, "status": "done", "gpu_peak_gib": gpu / GIB, "rss_peak_gib": rss / GIB,
            "footprint_gib": (gpu + rss) / GIB, "disk_written_gib": written / GIB, "wall_s": wall,
            "units": a.total, "unit": a.unit, **(phases(start, end, a.progress) or {}),
            "throughput": (a.total / wall) if a.total and wall else None,
            "declared_memory_gb": entry.memory_gb, "declared_duration_h": entry.duration_h,
            "eta_rel_error": _eta_error([(s["t"], s["jobs"][name]["eta_s"], s["jobs"][name]["done"],
                                          s["jobs"][name]["total"]) for s in samples if name in s["jobs"]], end),
        }
    budget = spec.settings.memory_budget_gb
    return {
        "pipeline": spec.name,
        "stages": stages,
        "max_reserved_together_gib": max((s["reserved"] for s in samples), default=0) / GIB,
        "max_footprint_together_gib": max((s["footprint"] for s in samples), default=0) / GIB,
        "budget_gib": budget,
        "min_disk_free_gib": min((s["disk_free"] for s in samples), default=0) / GIB,
        "samples": len(samples),
    }


RUN_KEYS = ("source", "footprint_gib", "gpu_peak_gib", "rss_peak_gib", "wall_s", "units", "startup_s", "unit_s",
            "tail_s", "step", "eta_rel_error")


def runs(m: dict[str, Any]) -> list[dict[str, Any]]:
    """A folded stage's runs, oldest first (a record from before runs were kept is its one run)."""
    return list(m.get("runs") or [{k: m[k] for k in RUN_KEYS if k in m}])


def sizing_runs(m: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs whose peaks size the stage: all but those marked ``memory_excluded``."""
    return [r for r in runs(m) if not r.get("memory_excluded")]


def derive(measured: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The declarations measured runs give: memory_gb and duration_h per stage that finished,
    from the largest footprint and wall time of the stage's runs (a rerun may be heavier)."""
    out = {}
    for name, m in measured["stages"].items():
        if m.get("status") != "done" or m.get("wall_s") is None:
            continue
        feet = [r["footprint_gib"] for r in sizing_runs(m)]
        if not feet:  # every run excluded: nothing sizes it
            continue
        wall = max(r["wall_s"] for r in runs(m))
        mem = max(1, math.ceil(round(max(feet) * HEADROOM * PER_GIB, 6)))
        cap = math.floor(round(1.25 * max(min(feet), 0.4) * PER_GIB, 6))
        if cap >= max(feet) * PER_GIB:  # within [measured, 1.25 x measured] of every run where one value can be
            mem = min(mem, cap)
        out[name] = {"memory_gb": mem / PER_GIB,
                     "duration_h": max(0.001, round(wall / 3600, 4))}
    return out


def check(measured: dict[str, Any]) -> list[str]:
    """Stages whose declaration is not within [measured peak, 1.25 x measured peak] of each sizing run."""
    bad = []
    for name, m in measured["stages"].items():
        if m.get("status") != "done":
            continue
        declared = m["declared_memory_gb"]
        for r in sizing_runs(m):
            peak = r["footprint_gib"]
            if not peak <= declared <= 1.25 * max(peak, 0.4):
                bad.append(f"{name}: declared {declared:g} GiB, measured {peak:.2f} GiB")
    return bad


def fold(data: dict[str, Any], measured: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """``data`` (the shipped measured file) with a run's finished stages: each stage's record is
    the new run's, its ``runs`` the earlier ones plus this one (``source`` says which run), so that
    the ETA's priors are the median of runs and the declarations cover every run."""
    out = {**data, "pipeline": measured["pipeline"], "stages": dict(data.get("stages") or {})}
    whole = all(m.get("status") == "done" for m in measured["stages"].values())
    for key in ("budget_gib", "max_reserved_together_gib", "max_footprint_together_gib", "min_disk_free_gib"):
        if whole or key not in data:  # a run that did not finish every stage (--target, a failure) is no whole run
            out[key] = measured[key]
    for name, m in measured["stages"].items():
        if m.get("status") != "done":
            continue
        rec = {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}
        old = data.get("stages", {}).get(name)
        earlier = runs(old) if isinstance(old, dict) and old.get("status") == "done" else []
        rec["runs"] = [*earlier, {k: rec[k] for k in RUN_KEYS if k in rec} | ({"source": source} if source else {})]
        out["stages"][name] = rec
    return out


def save(path: Path, measured: dict[str, Any]) -> None:
    atomic_write_json(path, measured)
