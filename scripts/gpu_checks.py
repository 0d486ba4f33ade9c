"""Checks that need a real GPU (run on the device box, not in CI).

1. The compiled Triton log-prob kernels equal the full-logits reference on CUDA,
   forward and backward (fp32, trainable and frozen head).
2. The `parity` stage on a tiny model: CPU fp32 against CUDA bf16; the ledger record
   names the devices that actually ran.
3. The `eval` stage on CUDA: its record names the device that ran it.

    python scripts/gpu_checks.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch


def check_logprob() -> bool:
    from kernels.logprob import reference_token_logprobs, token_logprobs

    torch.manual_seed(0)
    ok = True
    for weight_grad in (True, False):
        h = torch.randn(300, 64, device="cuda", dtype=torch.float32, requires_grad=True)
        w = torch.randn(5000, 64, device="cuda", dtype=torch.float32, requires_grad=weight_grad)
        t = torch.randint(0, 5000, (300,), device="cuda")
        fast = token_logprobs(h, w, t, chunk_size=64, backend="triton")
        g = torch.randn_like(fast)
        grads_fast = torch.autograd.grad((fast * g).sum(), [h, w] if weight_grad else [h])
        ref = reference_token_logprobs(h, w, t)
        grads_ref = torch.autograd.grad((ref * g).sum(), [h, w] if weight_grad else [h])
        err = max((fast - ref).abs().max().item(), *[(a - b).abs().max().item() for a, b in zip(grads_fast, grads_ref, strict=True)])
        print(f"logprob triton on cuda vs reference (weight_grad={weight_grad}): max abs err {err:.2e}")
        ok &= err < 1e-4
    return ok


def check_stages() -> bool:
    from engine.models.tiny import build_tiny_model
    from engine.stages.run import run_inline
    from engine.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "model")
        ws = Workspace(Path(tmp) / "ws")
        par = run_inline(ws, "parity", "parity", {"device_a": "cpu", "dtype_a": "float32", "device_b": "cuda",
                                                  "dtype_b": "bfloat16", "min_cosine": 0.99, "max_abs_diff": 0.5},
                         {"model": model}, device="cuda")
        ev = run_inline(ws, "eval", "eval", {"benchmark": "humaneval", "strategy": "standard", "prompt_mode": "auto",
                                             "max_new_tokens": 32, "temperature": 0.0, "n": 1, "seed": 0, "ks": [1],
                                             "limit": 8}, {"model": model}, outputs=["results"], device="cuda")
        records = [json.loads(x) for x in ws.ledger_path.read_text().splitlines()]
        for r in records:
            print(f"{r['benchmark']}: device {r.get('device')} devices {r.get('devices')} metrics {r['metrics']}")
        return par == "ok" and ev == "ok" and all("cuda" in str(r.get("device")) for r in records)


def main() -> int:
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    results = {"logprob": check_logprob(), "stages": check_stages()}
    for name, ok in results.items():
        print(f"GPUCHECK {name} {'PASS' if ok else 'FAIL'}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
