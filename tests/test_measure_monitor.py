"""The rehearsal's Monitor sees a short memory peak in a job's process tree: a sandbox pool
lives about two seconds, and a once-a-second sampler caught it once, mid start-up."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from engine.chain import append_chained
from engine.measure import Monitor, read_samples
from engine.spec import load_spec, pipeline_path
from engine.workspace import Workspace

HOLD_S = 1.5
# a job whose child holds 300 MB for HOLD_S, started after half a second, like a pool of workers
JOB = f"""
import subprocess, sys, time
time.sleep(0.5)
subprocess.run([sys.executable, "-c", "b = bytearray(300 << 20); import time; time.sleep({HOLD_S})"])
time.sleep(0.5)
"""


def test_a_child_alive_for_a_second_and_a_half_is_sampled_several_times(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws").init()
    spec = load_spec(pipeline_path("demo"))
    stage = next(iter(spec.stages))
    job = subprocess.Popen([sys.executable, "-c", JOB])
    append_chained(ws.journal_path, [{"ts": time.time(), "kind": "launched", "stage": stage, "job_id": f"{stage}.1",
                                      "identity": {"pid": job.pid, "start_ticks": 0, "boot_id": "test"},
                                      "reservation": 1 << 30}])
    monitor = Monitor(ws, spec)
    monitor.start()
    try:
        assert job.wait(timeout=60) == 0
    finally:
        monitor.stop.set()
        monitor.join(timeout=10)
    samples = [s["jobs"][stage] for s in read_samples(monitor.path) if stage in s["jobs"]]
    held = [j for j in samples if j["rss"] >= 300 << 20]
    assert len(held) >= 3, f"{len(held)} of {len(samples)} samples saw the child"
    assert all(j["reservation"] == 1 << 30 for j in samples)
