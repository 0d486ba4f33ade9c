"""Device memory while the SlotEngine fuses a model for sampling (share_weights: the projections
become views of the concatenated q|k|v and gate|up weights, their own copies are freed).

Baseline in the same process: the same fusing with ``torch.cuda.empty_cache`` disabled, i.e. the
freed copies left in PyTorch's caching allocator until the end (what the H200 rehearsal's 32B
teacher did: it peaked at weights + 64 %). Target: fusing adds at most 5 % of the weights.

    python bench/fuse_memory.py --shape 7b          # CUDA only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.gen.engine import SlotEngine  # noqa: E402
from engine.rehearsal import build_model, materialise  # noqa: E402

TARGET = 0.05


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="7b")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/fuse_memory.py measures CUDA device memory: run it on a GPU box")
    with tempfile.TemporaryDirectory() as tmp:
        build_model(Path(tmp) / "m", args.shape, materialise="memory", seed=0, device="cuda")
        keep = torch.cuda.empty_cache
        torch.cuda.empty_cache = lambda: None  # the baseline: nothing handed back while fusing
        try:
            base, weights = overhead(Path(tmp) / "m")
        finally:
            torch.cuda.empty_cache = keep
        extra, _ = overhead(Path(tmp) / "m")
    print(f"{torch.cuda.get_device_name()}, shape {args.shape}, weights {weights / 2**30:.1f} GiB: fusing peaks at "
          f"+{extra:.1%} of the weights, +{base:.1%} without handing freed copies back ({base / max(extra, 1e-9):.1f}x)")
    print(f"BENCH fuse_peak_overhead_frac {extra:.4f} {TARGET} {'PASS' if extra <= TARGET else 'MISS'}")


def overhead(model_dir: Path) -> tuple[float, int]:
    """Peak reserved device memory added by fusing, as a fraction of the weights."""
    model = materialise(model_dir, "cuda", torch.bfloat16)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    torch.cuda.synchronize()
    torch.cuda.memory.empty_cache()  # the original function, patched or not
    before = torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    SlotEngine(model, rows=1, max_len=64, stop_ids=[0], fused=True, share_weights=True)
    torch.cuda.synchronize()
    extra = (torch.cuda.max_memory_reserved() - before) / weights
    del model
    torch.cuda.memory.empty_cache()
    return extra, weights


if __name__ == "__main__":
    main()
