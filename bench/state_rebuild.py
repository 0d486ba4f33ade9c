"""Rebuild the full pipeline state from a workspace of 1,000 jobs and 1M events.

Baseline (the floor): reading every line of every log and ``json.loads`` it, in
the same process. Target: the rebuild takes at most 1.5x the floor.

    python bench/state_rebuild.py [--jobs 1000] [--events 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from engine.state import PipelineState
from engine.workspace import Workspace

TARGET = 1.5


def generate(ws: Workspace, jobs: int, events: int) -> int:
    """Write a journal and ``jobs`` job logs holding ``events`` events in all."""
    ws.init()
    per_job = events // jobs
    t0 = 1.8e9
    journal = []
    for j in range(jobs):
        stage = f"stage{j % 100:03d}"
        job_id = f"{stage}.{j // 100 + 1}"
        journal.append({"ts": t0 + j, "kind": "queued", "stage": stage})
        journal.append({"ts": t0 + j, "kind": "launched", "stage": stage, "job_id": job_id, "attempt": j // 100 + 1,
                        "identity": {"pid": 100000 + j, "start_ticks": j, "boot_id": "bench"}, "reservation": 1 << 30})
        lines = [json.dumps({"ts": t0 + j, "kind": "job_started", "job_id": job_id, "params": {"lr": 1e-5}, "pid": 1})]
        for i in range(per_job - 2):
            ts = t0 + j + i * 0.01
            r = i % 10
            if r < 6:
                ev = {"ts": ts, "kind": "progress", "done": i, "total": per_job, "unit": "prompts"}
            elif r < 9:
                ev = {"ts": ts, "kind": "metric", "name": "loss", "value": 1.0 / (i + 1), "step": i}
            else:
                ev = {"ts": ts, "kind": "resource", "rss": 1 << 30, "peak_rss": 1 << 30, "gpu": None}
            lines.append(json.dumps(ev))
        lines.append(json.dumps({"ts": t0 + j + 1e4, "kind": "job_finished", "outcome": "ok", "error": None, "peak_rss": 1 << 30}))
        ws.job_log(job_id).write_text("\n".join(lines) + "\n")
    ws.journal_path.write_text("\n".join(json.dumps(e) for e in journal) + "\n")
    return len(journal) + jobs * per_job


def floor(ws: Workspace) -> float:
    """Time to read every line of every log and json.loads it: nothing less can rebuild."""
    t = time.perf_counter()
    loads = json.loads
    for path in [ws.journal_path, *sorted((ws.logs_dir / "jobs").glob("*.jsonl"))]:
        with open(path, "rb") as fh:
            for line in fh:
                loads(line)
    return time.perf_counter() - t


def rebuild(ws: Workspace) -> tuple[float, PipelineState]:
    t = time.perf_counter()
    state = PipelineState(ws)
    state.refresh()
    return time.perf_counter() - t, state


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        n = generate(ws, args.jobs, args.events)
        size = sum(p.stat().st_size for p in (ws.logs_dir / "jobs").glob("*.jsonl"))
        print(f"workspace: {args.jobs} jobs, {n} events, {size / 1e6:.0f} MB; cpu {os.cpu_count()} cores, python {sys.version.split()[0]}")
        floors, rebuilds = [], []
        for _ in range(args.repeat):  # interleaved, best of each: page cache warm for both
            floors.append(floor(ws))
            dt, state = rebuild(ws)
            rebuilds.append(dt)
        assert len(state.jobs) == args.jobs and all(a.outcome == "ok" for a in state.jobs.values())
        f, r = min(floors), min(rebuilds)
        ratio = r / f
        print(f"json.loads floor: {f:.2f} s ({n / f / 1e6:.2f} M events/s)")
        print(f"state rebuild:    {r:.2f} s ({n / r / 1e6:.2f} M events/s)")
        print(f"ratio: {ratio:.2f}x the floor")
        print(f"BENCH state_rebuild_ratio {ratio:.2f} {TARGET} {'PASS' if ratio <= TARGET else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
