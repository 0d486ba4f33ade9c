"""Stage `tiny_model`: build a tiny Qwen2 model and its tokenizer for the demo pipeline."""

from __future__ import annotations

from pathlib import Path

from engine.models.tiny import TinyConfig, build_tiny_model
from engine.stages.base import StageContext, StageParams


class Params(StageParams):
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    seed: int = 0


INPUTS: dict[str, str] = {}
OUTPUTS = {"model": "Hugging Face checkpoint directory (safetensors + tokenizer)"}


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    return 1 << 30  # torch + tokenizers import dominates


def run(ctx: StageContext, params: Params) -> None:
    ctx.progress(0, 2, "steps")
    out = ctx.work_dir / "model"
    build_tiny_model(out, TinyConfig(**params.model_dump()))
    ctx.progress(1, 2, "steps")
    ctx.check_cancelled()
    ctx.publish("model", out)
    ctx.progress(2, 2, "steps")
