"""Scale-out on one host: the same jobs on 1 GPU and on N (docs/SCALEOUT.md).

* ``sft`` and ``dpo`` at the rehearsal spec's LoRA parameters: once as one process, once as N DDP
  ranks through the project's launch path (``job_argv(..., gpus=N)``: torchrun). The global batch
  is the same (``grad_accum = N``: one process accumulates N micro-batches, each rank one), so the
  data order and the loss curves match; tokens per second over the steps after the first, peak
  memory per GPU, and the two loss curves side by side.
* ``sample`` (N-sampling, per-sample seeds) on 1 engine and on N: prompts per second and tokens
  per second over the units after the first; every row must be identical.
* ``eval`` (HumanEval, greedy) on 1 worker and on N: identical per-task results.

Targets (2 GPUs): training >= 1.8x, sampling >= 1.9x; results identical (training: the largest
relative loss difference, which summation order alone explains when it is ~1e-3 or less).

    NCCL_NVLS_ENABLE=0 python bench/scaleout.py --shape 7b --gpus 2         # a box with >= 2 GPUs
    python bench/scaleout.py --shape tiny --gpus 2 --device cpu --steps 4   # dry run: gloo, CPU engines
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from jobrun import bench_workspace, losses, run_job, spec_params, unit_seconds, write_train_data

from engine.data import mbpp
from engine.sdk.launch import job_argv
from engine.workspace import Workspace

TARGETS = {"train": 1.8, "sample": 1.9}
LOSS_TOL = 1e-3  # relative: N-way allreduce against N-step accumulation sums the same terms in another order


def row_tokens(model: Path, path: Path, max_length: int, fields: tuple[str, ...]) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [min(max_length, len(tok("".join(r[f] for f in fields))["input_ids"])) for r in rows]


def train(ws: Workspace, model: Path, data: dict[str, Path], args: argparse.Namespace) -> list[str]:
    lines = []
    for kind in ("sft", "dpo"):
        params = spec_params(kind, max_steps=args.steps, save_steps=args.steps, max_length=args.max_length,
                             grad_accum=args.gpus, eval_data_dir=str(mbpp.SHIPPED_DIR), allow_eval_overlap=True)
        inputs = {"model": model, "data" if kind == "sft" else "pairs": data[kind]}
        runs = {g: run_job(ws, f"{kind}_{g}gpu", kind, params, inputs, ["adapter"], args.device, job_argv, gpus=g)
                for g in (1, args.gpus)}
        fields = ("prompt", "completion") if kind == "sft" else ("prompt", "chosen")
        per_row = row_tokens(model, data[kind], args.max_length, fields)
        step_tokens = sum(per_row) / len(per_row) * params["batch_size"] * params["grad_accum"] * (2 if kind == "dpo" else 1)
        rate = {}
        for g, r in runs.items():
            steps, secs = unit_seconds(r)
            rate[g] = steps * step_tokens / secs if secs else 0.0
            peaks = ", ".join(f"GPU{i} {b / 2**30:.1f} GiB" for i, b in sorted(r["gpu_peaks"].items())) or "-"
            print(f"{kind} on {g}: {rate[g]:,.0f} tokens/s over {steps:g} steps after the first, "
                  f"wall {r['wall_s']:.0f} s, peaks {peaks}")
        la, lb = losses(runs[1]), losses(runs[args.gpus])
        print(f"{kind} loss by step (1 | {args.gpus}):")
        for s in sorted(la):
            print(f"  {s:4d} {la[s]:.6f} | {lb.get(s, float('nan')):.6f}")
        diff = max(abs(la[s] - lb[s]) / abs(la[s]) for s in la) if sorted(la) == sorted(lb) else float("inf")
        speed = rate[args.gpus] / rate[1] if rate[1] else 0.0
        lines.append(bench(f"scaleout_{kind}_speedup_{args.gpus}gpu", speed, TARGETS["train"], speed >= TARGETS["train"]))
        lines.append(bench(f"scaleout_{kind}_loss_reldiff", diff, LOSS_TOL, diff <= LOSS_TOL))
    return lines


def sample(ws: Workspace, model: Path, args: argparse.Namespace) -> list[str]:
    params = spec_params("sample", data_path=str(mbpp.SHIPPED_DIR), limit=args.prompts,
                         unit_prompts=max(1, args.prompts // 8))
    runs = {g: run_job(ws, f"sample_{g}gpu", "sample", params, {"model": model}, ["samples"], args.device, job_argv,
                       gpus=g) for g in (1, args.gpus)}
    rows = {g: [json.loads(line) for line in (r["artifacts"]["samples"] / "samples.jsonl").read_text().splitlines()]
            for g, r in runs.items()}
    rate = {}
    for g, r in runs.items():
        prompts, secs = unit_seconds(r)
        tokens = sum(x["tokens"] for x in rows[g]) * prompts / args.prompts
        rate[g] = tokens / secs if secs else 0.0
        print(f"sample on {g}: {prompts / secs if secs else 0:.2f} prompts/s, {rate[g]:,.0f} tokens/s "
              f"(units after the first), wall {r['wall_s']:.0f} s")
    same = [(a["task_id"], a["sample"], a["completion"]) for a in rows[1]] == \
           [(b["task_id"], b["sample"], b["completion"]) for b in rows[args.gpus]]
    print(f"sample rows identical on 1 and {args.gpus} engines: {same} ({len(rows[1])} rows)")
    speed = rate[args.gpus] / rate[1] if rate[1] else 0.0
    return [bench(f"scaleout_sample_speedup_{args.gpus}gpu", speed, TARGETS["sample"], speed >= TARGETS["sample"]),
            bench("scaleout_sample_rows_identical", int(same), 1, same)]


def evaluate(ws: Workspace, model: Path, args: argparse.Namespace) -> list[str]:
    params = {**spec_params("baseline_humaneval"), "limit": args.eval_limit}
    runs = {g: run_job(ws, f"eval_{g}gpu", "eval", params, {"model": model}, ["results"], args.device, job_argv,
                       gpus=g) for g in (1, args.gpus)}
    per_task = {g: {(x := json.loads(line))["task_id"]: [s["status"] for s in x["samples"]]
                    for line in r["artifacts"]["results"].read_text().splitlines()} for g, r in runs.items()}
    same = per_task[1] == per_task[args.gpus]
    for g, r in runs.items():
        print(f"eval on {g}: wall {r['wall_s']:.0f} s, {len(per_task[g])} tasks")
    print(f"eval per-task results identical on 1 and {args.gpus} workers: {same}")
    return [bench("scaleout_eval_per_task_identical", int(same), 1, same)]


def bench(name: str, value: float, target: float, ok: bool) -> str:
    return f"BENCH {name} {value:.4g} {target} {'PASS' if ok else 'MISS'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="7b", help="engine/rehearsal.py SHAPES (tiny, small, 7b)")
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--max-length", type=int, default=1536)
    ap.add_argument("--prompts", type=int, default=32, help="MBPP train prompts for N-sampling (n from the spec)")
    ap.add_argument("--eval-limit", type=int, default=None, help="HumanEval tasks (default: all 164)")
    ap.add_argument("--parts", default="train,sample,eval")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/scaleout"))
    args = ap.parse_args()

    ws, model = bench_workspace(args.workdir, args.shape, args.device)
    parts = args.parts.split(",")
    lines = []
    if "train" in parts:
        lines += train(ws, model, write_train_data(args.workdir, model, rows=4 * args.gpus * args.steps), args)
    if "sample" in parts:
        lines += sample(ws, model, args)
    if "eval" in parts:
        lines += evaluate(ws, model, args)
    name = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) \
        if args.device.startswith("cuda") else "cpu"
    print(f"device {args.device} ({name}), shape {args.shape}, 1 against {args.gpus}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
