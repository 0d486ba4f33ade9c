"""Stage `dpo`: direct preference optimisation of a LoRA adapter with trl's DPOTrainer.

The pairs come from the `pairs` stage: ``prompt`` exactly as sent (chat template
applied), ``chosen``, ``rejected``. The reference is the base with the adapter disabled,
so an SFT adapter given as ``model`` is merged into its base first (streamed
by ``engine.models.lora.merge_adapter`` as the `merge` kind is, into ``work_dir``). Per-token log-probs go through
``pmat_kernels.logprob`` over completion tokens only. Before any update policy == reference,
so the first loss is known exactly (sigmoid: ln 2); anything else is a broken pipeline.
Writes a `dpo` ledger record (first/last loss, margins, accuracies) for AC-020.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

from pydantic import Field

from engine.sdk import train as _train
from engine.sdk.base import StageContext, StageFailed
from engine.workspace import content_hash, sha256_file


class Params(_train.TrainParams):
    """The LoRA training parameters every trainer kind shares, plus DPO's own."""

    beta: float = Field(gt=0)
    loss_type: Literal["sigmoid", "hinge", "ipo"]
    first_loss_tolerance: float = Field(default=0.02, gt=0)  # a check, not a hyperparameter


INPUTS = {
    "model": "base HF checkpoint dir, or a peft adapter dir (an SFT adapter: merged into its base first)",
    "pairs": "the pairs stage's dir (pairs.jsonl: prompt as sent, chosen, rejected, task_id...) or a JSONL file",
}
OUTPUTS = {"adapter": "peft LoRA adapter dir (+ tokenizer), on top of the (merged) base"}


def expected_first_loss(loss_type: str, beta: float) -> float:
    """The loss when policy == reference (every log-ratio 0)."""
    return {"sigmoid": math.log(2), "hinge": 1.0, "ipo": (1 / (2 * beta)) ** 2}[loss_type]


def base_dir(model: Path) -> Path:
    """The checkpoint an adapter dir sits on (its adapter_config's base), else ``model`` itself."""
    cfg = Path(model) / "adapter_config.json"
    if not cfg.is_file():
        return Path(model)
    base = json.loads(cfg.read_text()).get("base_model_name_or_path")
    if not base or not (Path(base) / "config.json").is_file():
        raise StageFailed(f"{cfg}: base_model_name_or_path {base!r} is not a local checkpoint dir")
    return Path(base)


def pairs_file(path: Path) -> Path:
    """The pairs stage publishes a dir holding pairs.jsonl; a bare JSONL file works too."""
    return Path(path) / "pairs.jsonl" if Path(path).is_dir() else Path(path)


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    import torch

    qlora = params.quantization == "nf4" or (params.quantization == "auto" and torch.cuda.is_available())
    return _train.training_memory_estimate(
        base_dir(inputs["model"]), rank=params.lora_rank, target_modules=params.target_modules,
        sequences=2 * params.batch_size, seq_len=params.max_length, qlora=qlora,
        chunk_size=params.logprob_chunk, with_reference=True)


def resolve_base(ctx: StageContext) -> Path:
    """``model`` itself, or the SFT adapter merged into its base (once; reused on resume)."""
    model = ctx.inputs["model"]
    if not (Path(model) / "adapter_config.json").is_file():
        return Path(model)
    from engine.models.lora import merge_adapter

    out = ctx.work_dir / "merged_base"
    done = ctx.work_dir / "merged_base.done"
    if not done.exists():
        if out.exists():
            import shutil

            shutil.rmtree(out)
        report = merge_adapter(base_dir(model), model, out, out_dtype=None, max_shard_bytes=1 << 30)
        _train.fsync_tree(out)
        done.write_text(json.dumps({"merged_modules": report.merged}))
        ctx.metric("sft_merged_modules", report.merged)
    return out


def build_trainer(ctx: StageContext, params: Params, base: Path, out_dir: Path, telemetry: _train.Telemetry):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    _train.quiet_datasets()
    path = pairs_file(ctx.inputs["pairs"])
    rows = _train.read_jsonl(path, ("prompt", "chosen", "rejected"))
    same = [i for i, r in enumerate(rows) if r["chosen"] == r["rejected"]]
    if same:
        raise StageFailed(f"{path}: record {same[0] + 1} has chosen == rejected")
    _train.require_clean(ctx, rows, path, params.eval_data_dir, params.humaneval_path, params.allow_eval_overlap,
                         params.humaneval_plus, params.mbpp_plus)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = _train.load_base(ctx, base, params)
    cuda = ctx.device.startswith("cuda")
    args = DPOConfig(**_train.trainer_args(params, out_dir, ctx.seed, cuda), beta=params.beta,
                     loss_type=[params.loss_type])
    trainer = _train.make_trainer(DPOTrainer, ctx, params, model=model, args=args, tokenizer=tokenizer,
                                  dataset=Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]),
                                  telemetry=telemetry, rows=len(rows))
    return trainer, tokenizer


def run(ctx: StageContext, params: Params) -> None:
    want = expected_first_loss(params.loss_type, params.beta)

    def first_loss_check(loss: float) -> str | None:
        if not math.isfinite(loss) or abs(loss - want) > params.first_loss_tolerance:
            return (f"first DPO loss {loss:.4f} is not {want:.4f} (+-{params.first_loss_tolerance}) for loss "
                    f"{params.loss_type}: policy and reference differ before training (reference not the base?)")
        return None

    fingerprint = _train.input_fingerprint(params.model_dump(), dict(ctx.inputs))
    out_dir, resume = _train.prepare_output_dir(ctx, fingerprint)
    # the check holds only before the first update: a resumed run starts past it
    telemetry = _train.Telemetry(ctx, first_loss_check, _train.resume_step(resume))
    base = resolve_base(ctx)
    trainer, tokenizer = build_trainer(ctx, params, base, out_dir, telemetry)
    _train.run_trainer(trainer, ctx, resume)
    hist = telemetry.history
    if not hist:
        raise StageFailed("training logged no loss (no steps ran?)")
    adapter = _train.publish_adapter(ctx, trainer, tokenizer)

    def at(i: int, key: str) -> float:
        return float(hist[i].get(key, float("nan")))

    k = max(1, len(hist) // 4)
    ctx.record_result({
        "benchmark": "dpo",
        "model_hash": content_hash(adapter),
        "model_path": str(adapter),
        "dataset_hash": sha256_file(pairs_file(ctx.inputs["pairs"])),
        "protocol": {"params": params.model_dump(), "base_model_hash": content_hash(base),
                     "sft_chained": base != Path(ctx.inputs["model"]), "seed": ctx.seed, "device": ctx.device,
                     "base_weights": _train.base_weights(trainer.model)},
        "metrics": {
            "first_loss": at(0, "loss"),
            "last_loss": at(-1, "loss"),
            "loss_first_quarter": sum(h["loss"] for h in hist[:k]) / k,
            "loss_last_quarter": sum(h["loss"] for h in hist[-k:]) / k,
            "first_margin": at(0, "rewards/margins"),
            "last_margin": at(-1, "rewards/margins"),
            "last_accuracy": at(-1, "rewards/accuracies"),
            "expected_first_loss": want,
            "steps": float(trainer.state.global_step),
        },
        "resumed_from": resume,
    })
