"""Stage `random_model`: a random-weight model at a real shape, built on the box (rehearsal).

``materialise: disk`` writes a full checkpoint (the student: every later stage reads its
files); ``memory`` writes only config, tokenizer and a marker, and the sampler draws the
weights in device memory when it loads the model (the 32B teacher: 65 GB that the
rehearsal box's disk cannot hold). See engine/rehearsal.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from engine.rehearsal import build_model, shape_of
from engine.sdk.base import StageContext, StageParams

MAX_TENSOR_BYTES = 152064 * 5120 * 4  # the largest tensor of the 32B shape, float32 on its way


class Params(StageParams):
    shape: str                              # engine/rehearsal.py SHAPES: 7b, 32b, small, tiny
    materialise: Literal["disk", "memory"]
    seed: int = Field(default=0, ge=0)


INPUTS: dict[str, str] = {}
OUTPUTS = {"model": "Hugging Face checkpoint directory, or a random source (config, tokenizer, marker)"}


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    shape_of(params.shape)  # an unknown shape is refused before admission
    return (1 << 30) + (2 * MAX_TENSOR_BYTES if params.materialise == "disk" else 0)


def run(ctx: StageContext, params: Params) -> None:
    out = ctx.work_dir / "model"
    build_model(out, params.shape, materialise=params.materialise, seed=params.seed, device=ctx.device,
                progress=lambda done, total: (ctx.progress(done, total, "tensors"), ctx.check_cancelled()))
    ctx.publish("model", out)
