"""Stage `command`: run an external program as a pipeline stage.

For tools pmat does not wrap (a llama.cpp binary, a user's script). The program
runs in the job's process group, so cancel and kill reach it. It can report
progress by printing lines ``PMAT_PROGRESS <done> <total> <unit>`` and metrics
with ``PMAT_METRIC <name> <value>``; other output goes to the job's .out file.
``PMAT_WORK_DIR`` points at the stage's persistent directory (resume state) and
``PMAT_ATTEMPT`` at the attempt number. A file the program leaves at
``$PMAT_WORK_DIR/output`` is published as the artifact ``output``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from engine.sdk.base import StageContext, StageFailed, StageParams


class Params(StageParams):
    argv: list[str]
    memory_bytes: int = 256 << 20
    publish_output: bool = False


INPUTS: dict[str, str] = {}
OUTPUTS: dict[str, str] = {}


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    return params.memory_bytes


def _handle(ctx: StageContext, line: str) -> None:
    parts = line.split()
    if parts[0] == "PMAT_PROGRESS" and len(parts) >= 3:
        ctx.progress(float(parts[1]), float(parts[2]), parts[3] if len(parts) > 3 else "items")
    elif parts[0] == "PMAT_METRIC" and len(parts) >= 3:
        ctx.metric(parts[1], float(parts[2]))
    else:
        print(line, flush=True)


def run(ctx: StageContext, params: Params) -> None:
    argv = [sys.executable if a == "{python}" else a for a in params.argv]
    env = {**os.environ, "PMAT_WORK_DIR": str(ctx.work_dir), "PMAT_ATTEMPT": str(ctx.job.attempt)}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=ctx.work_dir)
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            if raw.strip():
                _handle(ctx, raw.rstrip("\n"))
            if ctx.cancelled:
                proc.send_signal(signal.SIGTERM)
    finally:
        code = proc.wait()
    ctx.check_cancelled()
    if code != 0:
        raise StageFailed(f"command {argv[0]} exited with status {code}")
    if params.publish_output:
        out = ctx.work_dir / "output"
        if not out.exists():
            raise StageFailed(f"command left no output at {out}")
        ctx.publish("output", out)
