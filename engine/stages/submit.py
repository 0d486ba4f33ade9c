"""Stage `submit`: the final, gated artifact.

A bundle directory holding the GGUF, the safetensors checkpoint with its
tokenizer, a generated model card (the lineage of every stage with its
parameters and hashes, the results table, gate verdicts, contract status) and
SHA256SUMS. ``pmat submit --dry-run`` validates a bundle; an upload happens only
with an explicit flag and a token.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.bundle import write_bundle
from engine.spec import load_spec
from engine.stages.base import StageContext, StageParams


class Params(StageParams):
    model_name: str
    license: str = "apache-2.0"


INPUTS = {
    "gguf": "quantized GGUF file",
    "model": "final HF checkpoint dir (safetensors + tokenizer)",
}
OUTPUTS = {"bundle": "submission directory: GGUF, checkpoint, MODEL_CARD.md, SHA256SUMS"}


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    return 512 << 20  # files are copied in blocks


def run(ctx: StageContext, params: Params) -> None:
    out = ctx.work_dir / "bundle"
    if out.exists():
        shutil.rmtree(out)
    spec = load_spec(ctx.workspace.spec_path)
    write_bundle(out, ctx.workspace, spec, gguf=ctx.inputs["gguf"], model=ctx.inputs["model"],
                 model_name=params.model_name, license_id=params.license, progress=ctx.progress)
    ctx.check_cancelled()
    ctx.publish("bundle", out)
