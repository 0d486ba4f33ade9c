"""`pmat status` latency on the demo workspace, and which libraries it imports.

The workspace: the demo pipeline with every stage run once (fixture logs: progress,
per-step metrics, resource ticks). Measured: the wall time of `pmat status` as a fresh
process (what a person waits for), the baseline in the same invocation: the interpreter
alone (the floor) and the old path, the full spec check that imports every stage module.

    python bench/status.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
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


def wall(argv: list[str], runs: int) -> tuple[float, subprocess.CompletedProcess]:
    times, res = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        res = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from engine.spec import pipeline_path
    from pmat_tui.fixture import write_finished_demo

    with tempfile.TemporaryDirectory() as tmp:
        ws = write_finished_demo(Path(tmp) / "ws", pipeline_path("demo"))
        py = sys.executable
        floor, _ = wall([py, "-c", "pass"], args.runs)
        status, res = wall([py, "-m", "engine.cli.main", "status", "-w", str(ws.root)], args.runs)
        _, probe = wall([py, "-c", PROBE, str(ws.root)], 1)
        old, _ = wall([py, "-c", OLD, str(ws.root)], max(1, args.runs // 2))
    loaded = json.loads(probe.stderr.strip().splitlines()[-1])
    ml = [m for m in ML if m in loaded]
    print(f"demo workspace, {len(res.stdout.splitlines())} lines of status; median of {args.runs} runs")
    print(f"python -c pass        {floor:.3f} s (the floor)")
    print(f"old path (full check) {old:.3f} s")
    print(f"pmat status           {status:.3f} s ({old / status:.1f}x faster than the old path)")
    print(f"ML libraries imported: {', '.join(ml) or 'none'}")
    print(f"BENCH status_s {status:.3f} {TARGET_S} {'PASS' if status < TARGET_S else 'MISS'}")
    print(f"BENCH status_ml_imports {len(ml)} 0 {'PASS' if not ml else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
