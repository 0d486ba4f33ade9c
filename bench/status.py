"""`pmat status` latency on the demo workspace, and which libraries it imports.

The workspace: the demo pipeline with every stage run once (fixture logs: progress,
per-step metrics, resource ticks). Measured: the wall time of `pmat status` as a fresh
process (what a person waits for), the baseline in the same invocation: the interpreter
alone (the floor) and the old path, the full spec check that imports every stage module.
Wall and CPU time are both reported: on a box shared with other work the wall time also
measures the wait for a core.

    python bench/status.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 0.5
ML = ("torch", "transformers", "trl", "peft")
ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import sys; sys.argv = ['pmat', 'status', '-w', sys.argv[1]]; "
         "from engine.cli.main import main; main(sys.argv[1:]);"
         "import json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)")
OLD = ("import sys; from engine.cli._common import spec_of; from engine.overview import build_overview;"
       "from engine.state import load_state; from engine.workspace import Workspace;"
       "ws = Workspace(sys.argv[1]); build_overview(ws, spec_of(ws), load_state(ws))")


def wall(argv: list[str], runs: int) -> tuple[float, subprocess.CompletedProcess, float]:
    """Median wall time, the last result, and the median CPU time (user + system) of the runs:
    on a loaded box the wall time measures the queue for a core, the CPU time the work."""
    times, cpus, res = [], [], None
    for _ in range(runs):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        res = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=True)
        times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    return statistics.median(times), res, statistics.median(cpus)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from engine.spec import pipeline_path
    from pmat_tui.fixture import write_finished_demo

    with tempfile.TemporaryDirectory() as tmp:
        ws = write_finished_demo(Path(tmp) / "ws", pipeline_path("demo"))
        py = sys.executable
        floor, _, floor_cpu = wall([py, "-c", "pass"], args.runs)
        status, res, status_cpu = wall([py, "-m", "engine.cli.main", "status", "-w", str(ws.root)], args.runs)
        _, probe, _ = wall([py, "-c", PROBE, str(ws.root)], 1)
        old, _, old_cpu = wall([py, "-c", OLD, str(ws.root)], max(1, args.runs // 2))
    loaded = json.loads(probe.stderr.strip().splitlines()[-1])
    ml = [m for m in ML if m in loaded]
    print(f"demo workspace, {len(res.stdout.splitlines())} lines of status; median of {args.runs} runs")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; wall (CPU) seconds:")
    print(f"python -c pass        {floor:.3f} s ({floor_cpu:.3f} s CPU; the floor)")
    print(f"old path (full check) {old:.3f} s ({old_cpu:.3f} s CPU)")
    print(f"pmat status           {status:.3f} s ({status_cpu:.3f} s CPU; {old_cpu / status_cpu:.1f}x less CPU than the old path)")
    print(f"ML libraries imported: {', '.join(ml) or 'none'}")
    print(f"BENCH status_s {status:.3f} {TARGET_S} {'PASS' if status < TARGET_S else 'MISS'}")
    print(f"BENCH status_cpu_s {status_cpu:.3f} {TARGET_S} {'PASS' if status_cpu < TARGET_S else 'MISS'}")
    print(f"BENCH status_ml_imports {len(ml)} 0 {'PASS' if not ml else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
