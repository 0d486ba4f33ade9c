"""Stage `tiny_model`: build a tiny Qwen2 model and its tokenizer for the demo pipeline."""

from __future__ import annotations

from pathlib import Path

from engine.models.tiny import TinyConfig, build_tiny_model
from engine.sdk.base import StageContext, StageParams


class Params(TinyConfig, StageParams):
    """The tiny model's shape and seed (fields of TinyConfig)."""


INPUTS: dict[str, str] = {}
OUTPUTS = {"model": "Hugging Face checkpoint directory (safetensors + tokenizer)"}


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    return 1 << 30  # torch + tokenizers import dominates


def run(ctx: StageContext, params: Params) -> None:
    ctx.progress(0, 2, "steps")
    out = ctx.work_dir / "model"
    build_tiny_model(out, params)
    ctx.progress(1, 2, "steps")
    ctx.check_cancelled()
    ctx.publish("model", out)
    ctx.progress(2, 2, "steps")
