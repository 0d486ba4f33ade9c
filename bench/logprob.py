"""Peak memory and time of chunked vs full per-token log-probs, forward + backward.

    python bench/logprob.py                  # CPU, reduced: vocab / 4, hidden / 8, 4 x 256 tokens, fp32
    python bench/logprob.py --device cuda    # full size: vocab 152,064, hidden 3,584, 4 x 1,024 tokens, bf16

Each peak is measured in a fresh spawned process so peaks do not mix: peak = GPU
``max_memory_allocated`` (CUDA) or the rise of VmHWM (CPU) above the inputs, over one
forward + backward with a non-uniform upstream gradient (as DPO gives). Time: one more
process alternates the two variants, best of ``--reps`` steps each after warm-up. Two heads: a
trainable lm_head (grad for hidden and weight) and a frozen one (LoRA: grad for hidden).
Targets: chunked <= 25% of full's peak memory at <= 1.3x its time.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MEM_TARGET, TIME_TARGET = 0.25, 1.30


def _vm_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def _child(cfg: dict, head: str, variant: str | None, queue: mp.Queue) -> None:
    """Child process. ``variant`` given: the peak of one step of it. None: both variants
    timed alternately (full, chunked, full, ...) so a shared box's load drifts hit both."""
    import torch

    from pmat_kernels.logprob import reference_token_logprobs, token_logprobs

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    dev, dtype = torch.device(cfg["device"]), getattr(torch, cfg["dtype"])
    g = torch.Generator(device="cpu").manual_seed(0)
    n = cfg["batch"] * cfg["seq"]
    hidden = torch.randn(n, cfg["hidden"], generator=g).to(dev, dtype).requires_grad_(True)
    weight = (torch.randn(cfg["vocab"], cfg["hidden"], generator=g) * 0.02).to(dev, dtype)
    weight.requires_grad_(head == "trainable")
    targets = torch.randint(0, cfg["vocab"], (n,), generator=g).to(dev)
    coef = torch.randn(n, generator=g).to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step(which: str) -> None:
        hidden.grad = weight.grad = None
        if which == "full":
            lp = reference_token_logprobs(hidden, weight, targets)
        else:
            lp = token_logprobs(hidden, weight, targets, chunk_size=cfg["chunk"], backend=cfg["backend"])
        (lp * coef).sum().backward()
        sync()

    if variant is not None:  # the gradients' own storage counts: both variants pay it
        if dev.type == "cuda":
            sync()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step(variant)
            queue.put(torch.cuda.max_memory_allocated() - base)
        else:
            step(variant)  # first-call costs (BLAS buffers, thread pools) are not the variant's
            hidden.grad = weight.grad = None
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to VmRSS (Linux >= 4.0)
            base = _vm_kib("VmRSS")
            step(variant)
            queue.put((_vm_kib("VmHWM") - base) * 1024)
        return
    times: dict[str, list[float]] = {"full": [], "chunked": []}
    for i in range(cfg["warmup"] + cfg["reps"]):
        for which in ("full", "chunked"):
            t0 = time.perf_counter()
            step(which)
            if i >= cfg["warmup"]:
                times[which].append(time.perf_counter() - t0)
    queue.put({k: min(v) for k, v in times.items()})  # best of reps


def in_child(cfg: dict, head: str, variant: str | None):
    # a fixed mmap threshold makes glibc return every large free to the OS, so RSS tracks live tensors
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(cfg, head, variant, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"bench/logprob: {head}/{variant or 'timing'} child failed with exit code {proc.exitcode}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--chunk", type=int, help="token rows per forward chunk")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"])
    ap.add_argument("--backend", choices=["auto", "torch", "triton"], default="auto")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, help="CPU threads (default 1 on CPU: steadier on a shared box)")
    a = ap.parse_args(argv)
    full = a.device == "cuda"
    cfg = {
        "device": a.device,
        "vocab": a.vocab or (152_064 if full else 38_016),
        # CPU runs fp32 end to end, so hidden / 8 keeps the GPU's bytes(grad W) : bytes(fp32 logits)
        "hidden": a.hidden or (3_584 if full else 448),
        "batch": a.batch,
        "seq": a.seq or (1_024 if full else 256),
        "chunk": a.chunk or (512 if full else 128),
        "dtype": a.dtype or ("bfloat16" if full else "float32"),
        "backend": a.backend,
        "warmup": a.warmup,
        "reps": a.reps,
        "threads": a.threads or (0 if full else 1),
    }
    print("config", " ".join(f"{k}={v}" for k, v in cfg.items()))
    lines = []
    for head in ("trainable", "frozen"):
        peak = {v: in_child(cfg, head, v) for v in ("full", "chunked")}
        secs = in_child(cfg, head, None)
        for v in ("full", "chunked"):
            print(f"{head:9s} head {v:7s}: peak {peak[v] / 2**20:9.1f} MiB  time {secs[v] * 1e3:9.1f} ms")
        mem = peak["chunked"] / peak["full"]
        tim = secs["chunked"] / secs["full"]
        print(f"{head:9s} head chunked/full: memory {mem:.3f}  time {tim:.3f}")
        tag = "logprob" if head == "trainable" else "logprob_frozen_head"
        lines.append(f"BENCH {tag}_peak_mem_ratio {mem:.3f} {MEM_TARGET} {'PASS' if mem <= MEM_TARGET else 'MISS'}")
        lines.append(f"BENCH {tag}_time_ratio {tim:.3f} {TIME_TARGET} {'PASS' if tim <= TIME_TARGET else 'MISS'}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
