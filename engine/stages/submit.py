"""Stage `submit`: the final, gated artifact.

A bundle directory holding the GGUF, the safetensors checkpoint with its
tokenizer, a generated model card (the lineage of every stage with its
parameters and hashes, the results table, gate verdicts, contract status) and
SHA256SUMS. Before anything is written, every input is re-hashed in full and must
still be the evidence the approval named. ``pmat submit --dry-run`` validates a
bundle; an upload happens only with an explicit flag and a token.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.approvals import evidence_changes, stage_evidence
from engine.bundle import write_bundle
from engine.sdk.base import StageContext, StageFailed, StageParams
from engine.spec import PipelineSpec, load_spec
from engine.state import load_state


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


def check_approval(ctx: StageContext, spec: PipelineSpec) -> None:
    """Re-hash every input in full and hold the approval to it: bytes replaced since the
    approval (or since the scheduler's cheaper check) fail the stage instead of shipping."""
    ws = ctx.workspace
    if ctx.stage not in spec.stages or spec.stages[ctx.stage].approval != "required":
        return
    approval = load_state(ws).approvals.get(ctx.stage)
    now = stage_evidence(spec, ws, ctx.stage, full=True, persist=True)
    corrupt = [v for v in now["inputs"].values() if isinstance(v, str) and v.startswith("corrupt: ")]
    if corrupt:
        raise StageFailed(corrupt[0])
    if approval is None:
        raise StageFailed(f"{ctx.stage} has no approval")
    if approval.get("evidence") != now:
        changed = ", ".join(evidence_changes(approval.get("evidence") or {}, now))
        raise StageFailed(f"the approval of {ctx.stage} no longer holds ({changed} changed since): approve again")


def run(ctx: StageContext, params: Params) -> None:
    out = ctx.work_dir / "bundle"
    if out.exists():
        shutil.rmtree(out)
    spec = load_spec(ctx.workspace.spec_path)
    check_approval(ctx, spec)
    write_bundle(out, ctx.workspace, spec, gguf=ctx.inputs["gguf"], model=ctx.inputs["model"],
                 model_name=params.model_name, license_id=params.license, progress=ctx.progress)
    ctx.check_cancelled()
    ctx.publish("bundle", out)
