"""Stage `parity` (PMAT-037): the same model's logits under two (device, dtype) settings.

Both settings run the same prompts; the stage reports the cosine similarity of the
logit vectors (per position: min and mean) and the largest absolute difference, checks
them against the thresholds in its parameters, and records the devices that actually
ran. ``auto`` means CUDA when present, else CPU (so a CPU-only box compares cpu fp32
with cpu bf16); a device named explicitly but absent is an error, never a fallback.
"""

from __future__ import annotations

import time
from pathlib import Path

from engine.sdk.base import StageContext, StageFailed, StageParams
from engine.workspace import content_hash

DEFAULT_PROMPTS = (
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Write a Python function that reverses a string.\n",
    "import math\n\ndef is_prime(n: int) -> bool:\n",
)


class Params(StageParams):
    device_a: str                    # e.g. "cpu"
    dtype_a: str                     # e.g. "float32"
    device_b: str                    # e.g. "cuda" or "auto"
    dtype_b: str                     # e.g. "bfloat16"
    min_cosine: float                # every position's cosine must reach this
    max_abs_diff: float              # no logit may differ by more
    prompts: tuple[str, ...] = DEFAULT_PROMPTS


INPUTS = {"model": "HF checkpoint dir"}
OUTPUTS: dict[str, str] = {}


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    weights = sum(p.stat().st_size for p in Path(inputs["model"]).glob("*.safetensors"))
    return 2 * weights + (2 << 30)  # fp32 copy of bf16 weights, one setting at a time


def _logits(model_dir: Path, device: str, dtype: str, prompts: tuple[str, ...]):
    """fp32 CPU logits of every prompt, and the device and dtype the weights really had."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.gen.hf import load_dtype, resolve_device

    dev = resolve_device(device)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=load_dtype(dtype, dev)).to(dev).eval()
    param = next(model.parameters())
    ran = (str(param.device), str(param.dtype).removeprefix("torch."))
    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = tok(p, add_special_tokens=False, return_tensors="pt")["input_ids"].to(dev)
            out.append(model(ids).logits[0].float().cpu())
    del model
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
    return out, ran


def compare(a: list, b: list) -> dict[str, float]:
    """Per-position cosine (min, mean) and the max absolute difference over all prompts."""
    import torch

    cos = torch.cat([torch.nn.functional.cosine_similarity(x, y, dim=-1) for x, y in zip(a, b, strict=True)])
    diff = max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "max_abs_diff": diff}


def run(ctx: StageContext, params: Params) -> None:
    t0 = time.monotonic()
    model_dir = ctx.inputs["model"]
    if not params.prompts:
        raise StageFailed("parity: params.prompts is empty")
    try:
        a, ran_a = _logits(model_dir, params.device_a, params.dtype_a, params.prompts)
        ctx.progress(1, 2, "settings")
        ctx.check_cancelled()
        b, ran_b = _logits(model_dir, params.device_b, params.dtype_b, params.prompts)
        ctx.progress(2, 2, "settings")
    except (RuntimeError, ValueError) as exc:
        raise StageFailed(f"parity: {exc}") from None
    metrics = compare(a, b)
    ok = metrics["cosine_min"] >= params.min_cosine and metrics["max_abs_diff"] <= params.max_abs_diff
    metrics["passed"] = float(ok)
    for name, value in metrics.items():
        ctx.metric(name, value)
    ctx.record_result({
        "benchmark": "parity", "model_hash": content_hash(model_dir), "model_path": str(model_dir),
        "dataset_hash": None,
        "protocol": {"a": {"device": params.device_a, "dtype": params.dtype_a},
                     "b": {"device": params.device_b, "dtype": params.dtype_b},
                     "min_cosine": params.min_cosine, "max_abs_diff": params.max_abs_diff,
                     "prompts": list(params.prompts)},
        "metrics": metrics,
        "devices": {"a": {"device": ran_a[0], "dtype": ran_a[1]}, "b": {"device": ran_b[0], "dtype": ran_b[1]}},
        "device": f"{ran_a[0]}/{ran_b[0]}", "wall_s": round(time.monotonic() - t0, 3),
    })
    if not ok:
        raise StageFailed(f"parity: {ran_a} vs {ran_b}: cosine_min {metrics['cosine_min']:.6f} "
                          f"(need >= {params.min_cosine}), max_abs_diff {metrics['max_abs_diff']:.4g} "
                          f"(need <= {params.max_abs_diff})")
