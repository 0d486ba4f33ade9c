"""`gpus: 1` through the multi-rank launch path against today's path (docs/SCALEOUT.md).

The same job (stage kind, parameters, model, data, seed) runs three times as the supervisor
would start it: today's single process (``job_argv(..., gpus=1)``), the torchrun path with one
rank (``python -m engine.sdk.launch --ranks 1``: NCCL on CUDA, gloo on CPU, the model wrapped in
DDP), and today's path again, whose difference from the first run is the noise floor of the
device (non-deterministic GPU kernels). The launch path passes when its per-step losses and its
adapter differ from today's by no more than that floor (and a float32 rounding allowance).

    python bench/launch_parity.py --shape small --device cuda --steps 8     # on the GPU box
    python bench/launch_parity.py --shape tiny --device cpu --steps 4       # anywhere

The parameters are the rehearsal spec's (engine/pipelines/rehearsal.yaml), with only the step
count, the save interval and the sequence length shortened.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.data import mbpp  # noqa: E402
from engine.events import read_events  # noqa: E402
from engine.rehearsal import build_model  # noqa: E402
from engine.sdk.base import JobSpec  # noqa: E402
from engine.sdk.launch import job_argv  # noqa: E402
from engine.sdk.run import params_hash  # noqa: E402
from engine.workspace import Workspace  # noqa: E402

ROUNDING = 1e-5  # relative: an allreduce over one rank may still copy through another buffer


def spec_params(kind: str, steps: int, max_length: int) -> dict:
    stages = yaml.safe_load((REPO / "engine/pipelines/rehearsal.yaml").read_text())["stages"]
    params = dict(stages[kind]["params"])
    params.update(max_steps=steps, save_steps=steps, max_length=max_length, eval_data_dir=str(mbpp.SHIPPED_DIR),
                  allow_eval_overlap=True)  # MBPP train rows near its test rows: irrelevant to a parity check
    return params


def write_data(root: Path, model: Path, rows: int) -> dict[str, Path]:
    """SFT rows and DPO pairs from MBPP's train split, prompts through the model's chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    tasks = [t for line in (mbpp.SHIPPED_DIR / "mbpp.jsonl").read_text().splitlines()
             if 601 <= (t := json.loads(line))["task_id"] <= 974][:rows]  # the train split: not evaluated
    sft, pairs = [], []
    for t in tasks:
        prompt = tok.apply_chat_template([{"role": "user", "content": t["text"]}], tokenize=False,
                                         add_generation_prompt=True)
        sft.append({"prompt": prompt, "completion": t["code"]})
        pairs.append({"prompt": prompt, "chosen": t["code"], "rejected": "def f(*a):\n    return None\n",
                      "task_id": f"mbpp/{t['task_id']}"})
    out = {"sft": root / "sft.jsonl", "dpo": root / "pairs.jsonl"}
    out["sft"].write_text("".join(json.dumps(r) + "\n" for r in sft))
    out["dpo"].write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return out


def run_once(ws: Workspace, kind: str, label: str, params: dict, model: Path, data: Path, device: str,
             argv_of) -> dict:
    stage = f"{kind}_{label}"
    job = JobSpec(job_id=f"{stage}.1", stage=stage, kind=kind, attempt=1, workspace=str(ws.root), params=params,
                  inputs={"model": str(model), "data" if kind == "sft" else "pairs": str(data)},
                  params_hash=params_hash(params), outputs=["adapter"], device=device)
    job.save(ws.job_file(job.job_id))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    proc = subprocess.run(argv_of(ws.job_file(job.job_id), kind), cwd=ws.root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    events = read_events(ws.job_log(job.job_id))
    end = [e for e in events if e["kind"] == "job_finished"]
    if proc.returncode != 0 or not end or end[-1]["outcome"] != "ok":
        sys.exit(f"{stage}: exit {proc.returncode}, {end[-1] if end else 'no job_finished'}\n{proc.stderr[-3000:]}")
    losses = {e["step"]: e["value"] for e in events if e["kind"] == "metric" and e["name"] == "loss"}
    adapter = next(Path(e["path"]) for e in events if e["kind"] == "artifact" and e["name"] == "adapter")
    return {"losses": losses, "adapter": load_file(adapter / "adapter_model.safetensors"), "wall_s": wall}


def differences(a: dict, b: dict) -> tuple[float, float]:
    """Largest relative per-step loss difference, largest relative adapter-tensor difference."""
    if sorted(a["losses"]) != sorted(b["losses"]) or sorted(a["adapter"]) != sorted(b["adapter"]):
        return float("inf"), float("inf")
    loss = max(abs(a["losses"][s] - b["losses"][s]) / max(abs(a["losses"][s]), 1e-12) for s in a["losses"])
    weights = max(((x := a["adapter"][k].float()) - b["adapter"][k].float()).abs().max().item()
                  / max(x.abs().max().item(), 1e-12) for k in a["adapter"])
    return loss, weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="tiny", help="engine/rehearsal.py SHAPES (tiny, small, 7b)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--kinds", default="sft,dpo")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/launch-parity"))
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    ws = Workspace(args.workdir / f"ws-{int(time.time())}").init()
    model = args.workdir / f"model-{args.shape}"
    if not (model / "config.json").exists():
        build_model(model, args.shape, materialise="disk", seed=0, device=args.device)
    data = write_data(args.workdir, model, rows=4 * args.steps)
    paths = {"today": lambda f, k: job_argv(f, k, 1),
             "launch": lambda f, k: [sys.executable, "-m", "engine.sdk.launch", "--ranks", "1", str(f)],
             "today_again": lambda f, k: job_argv(f, k, 1)}
    assert paths["today"](Path("j"), "sft")[2] != "engine.sdk.launch", "gpus: 1 no longer takes today's path"
    results = []
    for kind in args.kinds.split(","):
        params = spec_params(kind, args.steps, args.max_length)
        runs = {label: run_once(ws, kind, label, params, model, data[kind], args.device, p)
                for label, p in paths.items()}
        floor = differences(runs["today"], runs["today_again"])
        got = differences(runs["today"], runs["launch"])
        for label, r in runs.items():
            print(f"{kind} {label:12s} wall {r['wall_s']:6.1f} s losses "
                  + " ".join(f"{r['losses'][s]:.6f}" for s in sorted(r["losses"])))
        print(f"{kind}: launch vs today: loss {got[0]:.2e}, adapter {got[1]:.2e}; "
              f"today vs today again (floor): loss {floor[0]:.2e}, adapter {floor[1]:.2e}")
        results.append((kind, got, floor))
    print(f"device {args.device} ({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}), "
          f"shape {args.shape}, {args.steps} steps")
    for kind, got, floor in results:
        for i, what in enumerate(("loss", "adapter")):
            target = floor[i] + ROUNDING
            print(f"BENCH launch_parity_{kind}_{what}_reldiff {got[i]:.3e} {target:.3e} "
                  f"{'PASS' if got[i] <= target else 'MISS'}")


if __name__ == "__main__":
    main()
