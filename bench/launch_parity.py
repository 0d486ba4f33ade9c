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
import sys
from pathlib import Path

import torch
from jobrun import bench_workspace, losses, run_job, spec_params, write_train_data
from safetensors.torch import load_file

from engine.data import mbpp
from engine.sdk.launch import job_argv

ROUNDING = 1e-5  # relative: an allreduce over one rank may still copy through another buffer


def train_params(kind: str, steps: int, max_length: int) -> dict:
    return spec_params(kind, max_steps=steps, save_steps=steps, max_length=max_length,
                       eval_data_dir=str(mbpp.SHIPPED_DIR),
                       allow_eval_overlap=True)  # MBPP train rows near its test rows: irrelevant to a parity check


def differences(a: dict, b: dict) -> tuple[float, float]:
    """Largest relative per-step loss difference, largest relative adapter-tensor difference."""
    la, lb = losses(a), losses(b)
    wa, wb = (load_file(r["artifacts"]["adapter"] / "adapter_model.safetensors") for r in (a, b))
    if sorted(la) != sorted(lb) or sorted(wa) != sorted(wb):
        return float("inf"), float("inf")
    loss = max(abs(la[s] - lb[s]) / max(abs(la[s]), 1e-12) for s in la)
    weights = max(((x := wa[k].float()) - wb[k].float()).abs().max().item() / max(x.abs().max().item(), 1e-12)
                  for k in wa)
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

    ws, model = bench_workspace(args.workdir, args.shape, args.device)
    data = write_train_data(args.workdir, model, rows=4 * args.steps)
    paths = {"today": job_argv,
             "launch": lambda f, k, g: [sys.executable, "-m", "engine.sdk.launch", "--ranks", "1", str(f)],
             "today_again": job_argv}
    assert "engine.sdk.launch" not in job_argv(Path("j"), "sft", 1), "gpus: 1 no longer takes today's path"
    results = []
    for kind in args.kinds.split(","):
        params = train_params(kind, args.steps, args.max_length)
        inputs = {"model": model, "data" if kind == "sft" else "pairs": data[kind]}
        runs = {label: run_job(ws, f"{kind}_{label}", kind, params, inputs, ["adapter"], args.device, p)
                for label, p in paths.items()}
        floor = differences(runs["today"], runs["today_again"])
        got = differences(runs["today"], runs["launch"])
        for label, r in runs.items():
            print(f"{kind} {label:12s} wall {r['wall_s']:6.1f} s losses "
                  + " ".join(f"{v:.6f}" for _, v in sorted(losses(r).items())))
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
