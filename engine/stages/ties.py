"""Stage `ties`: TIES-merge two or more specialists onto their base, or SLERP between two.

The specialists are the inputs named ``model_*`` (``model_a``, ``model_dpo``, ...); TIES
weighs and trims each by its name, SLERP goes from the first name in sorted order (t=0)
to the second (t=1).

Each specialist is a full checkpoint or a peft LoRA adapter on the base (its weights are
base + B@A, computed per tensor). Tensors are streamed, one tensor of each model at a
time, with the fp32 arithmetic on the job's device. Trimming is per tensor (as mergekit)
or over the whole model (as the TIES paper; two extra streamed passes find the exact
model-wide threshold). Every tensor reports its sign conflicts (naive sum / after trim /
after election, AC-007) and its norm drift (AC-006); the totals go to the results ledger
as benchmark "ties".
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import torch
from pydantic import ConfigDict, Field, model_validator

from engine.models.checkpoint import CheckpointReader, model_dir_hash, open_checkpoint
from engine.models.checkpoint_writer import (
    ShardedWriter,
    copy_side_files,
    set_config_dtype,
    storage_dtype,
)
from engine.models.lora import ADAPTER_CONFIG, LoraAdapter, load_adapter
from engine.sdk.base import StageContext, StageFailed, StageParams
from pmat_kernels.ties import KthLargest, disjoint_merge, sign_conflicts, slerp, trim_mask

SPECIALIST = "model_"


def specialist_names(names) -> list[str]:
    """The specialists among a stage's input names, in sorted order."""
    return sorted(n for n in names if n.startswith(SPECIALIST))


class TiesParams(StageParams):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    weights: dict[str, float]
    densities: dict[str, float]
    lambda_: float = Field(alias="lambda")
    normalize: bool
    trim: Literal["tensor", "model"]

    @model_validator(mode="after")
    def _keys(self) -> TiesParams:
        if set(self.weights) != set(self.densities):
            raise ValueError(f"weights {sorted(self.weights)} and densities {sorted(self.densities)} "
                             "must name the same specialists")
        for k, v in self.densities.items():
            if not 0.0 < v <= 1.0:
                raise ValueError(f"densities.{k} must be in (0, 1], got {v}")
        return self


class SlerpParams(StageParams):
    t: float = Field(ge=0.0, le=1.0)  # 0 -> the first specialist by name, 1 -> the second


class Params(StageParams):
    method: Literal["ties", "slerp"]
    ties: TiesParams | None = None  # required when method is ties
    slerp: SlerpParams | None = None  # required when method is slerp
    out_dtype: Literal["float32", "float16", "bfloat16"] | None = None  # None: the base's dtype
    max_shard_bytes: int = 4 << 30  # output file size only: shards are written through

    @model_validator(mode="after")
    def _method_block(self) -> Params:
        other = "slerp" if self.method == "ties" else "ties"
        if getattr(self, self.method) is None:
            raise ValueError(f"method {self.method!r} needs a {self.method!r} block")
        if getattr(self, other) is not None:
            raise ValueError(f"method {self.method!r} takes no {other!r} block")
        return self


INPUTS = {"base": "base HF checkpoint dir (supplies the side files; TIES deltas are taken against it)"}
VARIADIC_INPUTS = (SPECIALIST, 2, "specialist: HF checkpoint dir or peft LoRA adapter dir on the base")


def check_inputs(params: Params, names: set[str]) -> None:
    """TIES weights and densities name exactly the specialist inputs; SLERP takes two."""
    models = specialist_names(names)
    if params.ties is not None and sorted(params.ties.weights) != models:
        raise ValueError(f"params.ties.weights: names {sorted(params.ties.weights)}; the specialist inputs "
                         f"are {models}")
    if params.slerp is not None and len(models) != 2:
        raise ValueError(f"params.slerp: interpolates exactly 2 specialists, the inputs name {models}")
OUTPUTS = {"model": "merged HF checkpoint dir"}


class Specialist:
    """Per-tensor fp32 weights of a specialist, from its checkpoint or base + adapter."""

    def __init__(self, path: Path, base: CheckpointReader) -> None:
        self.path = Path(path)
        self.adapter: LoraAdapter | None = None
        self.reader: CheckpointReader | None = None
        if (self.path / ADAPTER_CONFIG).is_file():
            self.adapter = load_adapter(self.path)
            self.adapter.check_against(base)
            return
        self.reader = open_checkpoint(self.path)
        ours, theirs = set(base.names()), set(self.reader.names())
        if ours != theirs:
            diff = sorted(ours ^ theirs)
            raise StageFailed(f"{self.path}: tensor names differ from base {base.root}: {', '.join(diff)}")
        bad = [n for n in ours if base.shape(n) != self.reader.shape(n)]
        if bad:
            raise StageFailed(f"{self.path}: shapes differ from base for {', '.join(sorted(bad))}")

    def weight(self, name: str, base_fp32: torch.Tensor) -> torch.Tensor:
        if self.reader is not None:
            return self.reader.get(name).to(base_fp32.device, torch.float32)
        assert self.adapter is not None
        if name in self.adapter.targets():
            return self.adapter.apply_(name, base_fp32.clone())
        return base_fp32


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    """fp32 copies of the largest tensor: base, merged, masks, and per specialist its weight,
    delta and trim, plus the stack; the writer buffers nothing."""
    base = open_checkpoint(inputs["base"])
    largest = max(base.nbytes(n) // base.dtype(n).itemsize for n in base.names()) * 4
    return (4 + 3 * len(specialist_names(inputs))) * largest + (800 << 20)


def _float_names(base: CheckpointReader) -> list[str]:
    return [n for n in base.iter_shard_order() if base.dtype(n).is_floating_point]


def _global_thresholds(
    ctx: StageContext, base: CheckpointReader, specs: list[Specialist], densities: list[float]
) -> list[KthLargest]:
    """Model-wide trimming: exact per-model k-th largest |delta| in two streamed passes."""
    names = _float_names(base)
    numel = sum(torch.Size(base.shape(n)).numel() for n in names)
    selectors = [KthLargest(max(1, int(d * numel))) for d in densities]
    for pass_no in (1, 2):
        for i, name in enumerate(names):
            ctx.check_cancelled()
            b = base.get(name).to(ctx.device, torch.float32)
            for spec, sel in zip(specs, selectors, strict=True):
                sel.update(spec.weight(name, b) - b)
            if i % 32 == 0:
                ctx.progress(i, len(names), f"tensors (threshold pass {pass_no})")
        for sel in selectors:
            sel.end_pass()
    return selectors


def run(ctx: StageContext, params: Params) -> None:
    out = ctx.work_dir / "model"
    if out.exists():  # one pass (three with model-wide trim): a new attempt starts over
        shutil.rmtree(out)
    try:
        check_inputs(params, set(ctx.inputs))
    except ValueError as exc:
        raise StageFailed(str(exc)) from None
    models = specialist_names(ctx.inputs)
    base = open_checkpoint(ctx.inputs["base"])
    specs = [Specialist(ctx.inputs[m], base) for m in models]
    tp, sp = params.ties, params.slerp
    weights = [tp.weights[m] for m in models] if tp else []
    densities = [tp.densities[m] for m in models] if tp else []
    selectors = _global_thresholds(ctx, base, specs, densities) if tp and tp.trim == "model" else None

    names = list(base.iter_shard_order())
    per_tensor: dict[str, dict[str, float]] = {}
    totals = {"naive": 0, "trimmed": 0, "elected": 0, "numel": 0}
    layout = [
        (n, storage_dtype(params.out_dtype, base.dtype(n)) if base.dtype(n).is_floating_point else base.dtype(n),
         base.shape(n))
        for n in names
    ]
    with ShardedWriter(out, params.max_shard_bytes, layout=layout) as writer:
        for i, name in enumerate(names):
            ctx.check_cancelled()
            raw = base.get(name)
            if not raw.is_floating_point():
                writer.add(name, raw)
                continue
            dtype = storage_dtype(params.out_dtype, raw.dtype)
            b = raw.to(ctx.device, torch.float32)
            del raw
            if tp is not None:
                deltas = [s.weight(name, b) - b for s in specs]
                if selectors is None:
                    trimmed = [d * trim_mask(d, den) for d, den in zip(deltas, densities, strict=True)]
                else:
                    trimmed = [d * sel.keep_mask(d) for d, sel in zip(deltas, selectors, strict=True)]
                merged_delta, agree = disjoint_merge(trimmed, weights, tp.normalize)
                row = {
                    "naive": sign_conflicts(deltas),
                    "trimmed": sign_conflicts(trimmed),
                    "elected": sign_conflicts([t * a for t, a in zip(trimmed, agree, strict=True)]),
                }
                del deltas, trimmed, agree
                ref_norm = float(b.norm())
                merged = b.add_(merged_delta, alpha=tp.lambda_)
                for k, v in row.items():
                    totals[k] += v
                totals["numel"] += merged.numel()
            else:
                assert sp is not None
                wa, wb = specs[0].weight(name, b), specs[1].weight(name, b)
                ref_norm = (1 - sp.t) * float(wa.norm()) + sp.t * float(wb.norm())
                merged = slerp(sp.t, wa, wb)
                row = {}
            drift = float(merged.norm()) / ref_norm - 1 if ref_norm > 0 else 0.0
            row["norm_drift"] = drift
            per_tensor[name] = row
            ctx.metric("norm_drift", drift, step=i, tensor=name)
            if tp is not None:
                ctx.metric("sign_conflicts_naive", row["naive"], step=i, tensor=name)
                ctx.metric("sign_conflicts_elected", row["elected"], step=i, tensor=name)
            writer.add(name, merged.to("cpu", dtype))
            del merged, b
            if i % 16 == 0 or i + 1 == len(names):
                ctx.progress(i + 1, len(names), "tensors")
    copy_side_files(ctx.inputs["base"], out)
    if params.out_dtype is not None:
        set_config_dtype(out, storage_dtype(params.out_dtype, torch.float32))

    drifts = [abs(r["norm_drift"]) for r in per_tensor.values()]
    metrics = {"norm_drift_max_abs": max(drifts), "norm_drift_mean_abs": sum(drifts) / len(drifts)}
    if tp is not None:
        metrics |= {f"sign_conflicts_{k}": float(totals[k]) for k in ("naive", "trimmed", "elected")}
        metrics["sign_conflict_frac_naive"] = totals["naive"] / max(1, totals["numel"])
        metrics["sign_conflict_frac_elected"] = totals["elected"] / max(1, totals["numel"])
    for k, v in metrics.items():
        ctx.metric(k, v)
    ctx.publish("model", out)
    manifest = ctx.workspace.manifest(ctx.stage, "model") or {}
    ctx.record_result(
        {
            "benchmark": "ties",
            "model_hash": manifest.get("sha256"),
            "model_path": manifest.get("path"),
            "dataset_hash": None,
            "protocol": {
                "method": params.method,
                **({"ties": tp.model_dump(by_alias=True)} if tp else {}),
                **({"slerp": sp.model_dump()} if sp else {}),
                "out_dtype": params.out_dtype,
                "inputs": {k: model_dir_hash(ctx.inputs[k]) for k in ("base", *models)},
            },
            "metrics": metrics,
            "per_tensor": per_tensor,
        }
    )
