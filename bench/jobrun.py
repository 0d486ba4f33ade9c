"""Run a stage job as the supervisor starts it (a job file, then ``job_argv`` as its own process)
and read back what its log says: for the benchmarks that compare launch paths and GPU counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.data import mbpp  # noqa: E402
from engine.events import read_events  # noqa: E402
from engine.rehearsal import build_model  # noqa: E402
from engine.sdk.base import JobSpec  # noqa: E402
from engine.sdk.run import params_hash  # noqa: E402
from engine.workspace import Workspace  # noqa: E402

Argv = Callable[[Path, str, int], list[str]]


def bench_workspace(workdir: Path, shape: str, device: str) -> tuple[Workspace, Path]:
    """A fresh workspace under ``workdir`` and a random-weight model of ``shape`` (built once, reused)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ws = Workspace(workdir / f"ws-{int(time.time())}").init()
    model = workdir / f"model-{shape}"
    if not (model / "config.json").exists():
        build_model(model, shape, materialise="disk", seed=0, device=device)
    return ws, model


def spec_params(kind_or_stage: str, **changes: Any) -> dict[str, Any]:
    """A stage's parameters from the rehearsal spec (the one source), with ``changes`` applied."""
    stages = yaml.safe_load((REPO / "engine/pipelines/rehearsal.yaml").read_text())["stages"]
    return {**stages[kind_or_stage]["params"], **changes}


def write_train_data(root: Path, model: Path, rows: int) -> dict[str, Path]:
    """SFT rows and DPO pairs from MBPP's train split (never evaluated), prompts through the model's
    chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    tasks = [t for line in (mbpp.SHIPPED_DIR / "mbpp.jsonl").read_text().splitlines()
             if 601 <= (t := json.loads(line))["task_id"] <= 974][:rows]
    sft, pairs = [], []
    for t in tasks:
        prompt = tok.apply_chat_template([{"role": "user", "content": t["text"]}], tokenize=False,
                                         add_generation_prompt=True)
        sft.append({"prompt": prompt, "completion": t["code"]})
        pairs.append({"prompt": prompt, "chosen": t["code"], "rejected": "def f(*a):\n    return None\n",
                      "task_id": f"mbpp/{t['task_id']}"})
    root.mkdir(parents=True, exist_ok=True)
    out = {"sft": root / "sft.jsonl", "dpo": root / "pairs.jsonl"}
    out["sft"].write_text("".join(json.dumps(r) + "\n" for r in sft))
    out["dpo"].write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return out


class GpuPeaks:
    """Peak used memory per GPU while a job runs (nvidia-smi every 0.2 s; empty without GPUs)."""

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in out.strip().splitlines():
                i, used = (int(x) for x in line.split(","))
                self.peaks[i] = max(self.peaks.get(i, 0), used << 20)

    def __enter__(self) -> GpuPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_job(ws: Workspace, stage: str, kind: str, params: dict[str, Any], inputs: dict[str, Path | str],
            outputs: list[str], device: str, argv_of: Argv, gpus: int = 1) -> dict[str, Any]:
    """Run one job to its end; exit with its error if it did not finish ok. Returns its events,
    wall time, per-GPU peaks and the paths of its published artifacts."""
    job = JobSpec(job_id=f"{stage}.1", stage=stage, kind=kind, attempt=1, workspace=str(ws.root), params=params,
                  inputs={k: str(v) for k, v in inputs.items()}, params_hash=params_hash(params), outputs=outputs,
                  device=device, gpus=gpus)
    job.save(ws.job_file(job.job_id))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    with GpuPeaks() as gpu:
        proc = subprocess.run(argv_of(ws.job_file(job.job_id), kind, gpus), cwd=ws.root, env=env,
                              capture_output=True, text=True)
    wall = time.perf_counter() - t0
    events = read_events(ws.job_log(job.job_id))
    end = [e for e in events if e["kind"] == "job_finished"]
    if proc.returncode != 0 or not end or end[-1]["outcome"] != "ok":
        sys.exit(f"{stage}: exit {proc.returncode}, {end[-1] if end else 'no job_finished'}\n{proc.stderr[-3000:]}")
    artifacts = {e["name"]: Path(e["path"]) for e in events if e["kind"] == "artifact"}
    return {"events": events, "wall_s": wall, "gpu_peaks": gpu.peaks, "artifacts": artifacts}


def losses(run: dict[str, Any]) -> dict[int, float]:
    return {e["step"]: e["value"] for e in run["events"] if e["kind"] == "metric" and e["name"] == "loss"}


def unit_seconds(run: dict[str, Any]) -> tuple[float, float]:
    """(units done after the first, seconds they took): the work phase, without start-up and tail."""
    prog = [e for e in run["events"] if e["kind"] == "progress" and e.get("done")]
    if len(prog) < 2:
        return 0.0, 0.0
    return prog[-1]["done"] - prog[0]["done"], prog[-1]["ts"] - prog[0]["ts"]
