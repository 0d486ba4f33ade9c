"""Stage `merge`: fold a peft LoRA adapter into its base checkpoint (engine/models/lora.py), one
tensor at a time; the result is a sharded safetensors checkpoint with the base's side files.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from safetensors import safe_open

from engine.models.checkpoint import open_checkpoint
from engine.models.lora import ADAPTER_WEIGHTS, LORA_KEY, PREFIX, merge_adapter
from engine.sdk.base import StageContext, StageParams


class Params(StageParams):
    out_dtype: Literal["float32", "float16", "bfloat16"] | None = None  # None: the base's dtype
    max_shard_bytes: int = 4 << 30  # output file size only: shards are written through


INPUTS = {"model": "base HF checkpoint dir (safetensors)", "adapter": "peft LoRA adapter dir"}
OUTPUTS = {"model": "merged HF checkpoint dir (sharded safetensors + config + tokenizer)"}


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    """Read, fp32 and output scratch sized for the largest tensor that is computed on (the
    adapted ones; all when the dtype changes), the adapter and the runtime. Unchanged
    tensors are copied file to file and the writer buffers nothing."""
    base = open_checkpoint(inputs["model"])
    adapter = Path(inputs["adapter"]) / ADAPTER_WEIGHTS
    computed = [base.nbytes(n) // base.dtype(n).itemsize for n in base.names()] if params.out_dtype else [0]
    if adapter.is_file():
        with safe_open(str(adapter), framework="pt") as fh:
            for key in fh.keys():
                m = LORA_KEY.match(key.removeprefix(PREFIX))
                name = f"{m['mod']}.weight" if m else ""
                if name in base:
                    computed.append(base.nbytes(name) // base.dtype(name).itemsize)
    adapter_bytes = adapter.stat().st_size if adapter.is_file() else 0
    return max(computed) * (4 + 4 + 4) + 2 * adapter_bytes + (700 << 20)


def run(ctx: StageContext, params: Params) -> None:
    out = ctx.work_dir / "model"
    if out.exists():  # a previous attempt's partial output: the merge is one pass, redo it
        shutil.rmtree(out)

    def on_tensor(done: int, total: int) -> None:
        ctx.check_cancelled()
        if done == total or done % 16 == 0:
            ctx.progress(done, total, "tensors")

    report = merge_adapter(
        ctx.inputs["model"],
        ctx.inputs["adapter"],
        out,
        out_dtype=params.out_dtype,
        max_shard_bytes=params.max_shard_bytes,
        device=ctx.device,
        on_tensor=on_tensor,
    )
    ctx.metric("merged_modules", report.merged)
    ctx.metric("replaced_tensors", report.replaced)
    ctx.metric("merge_seconds", report.seconds)
    ctx.publish("model", out)
