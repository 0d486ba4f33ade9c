"""Stage `sft`: supervised fine-tuning of a LoRA adapter with trl's SFTTrainer.

QLoRA (NF4 base through bitsandbytes) when CUDA and bitsandbytes are present, plain LoRA
otherwise; loss on completion tokens only; per-token log-probs through
``pmat_kernels.logprob`` (no full-vocabulary logits). Every hyperparameter comes from the spec.
A first logged loss above ln(vocab) + 1 fails the stage: that is a broken pipeline
(misaligned labels, wrong tokenizer), not a bad run. Checkpoints every ``save_steps``;
a killed job resumes from the last complete one.
"""

from __future__ import annotations

import math
from pathlib import Path

from engine.sdk import train as _train
from engine.sdk.base import StageContext, StageFailed
from engine.workspace import content_hash, sha256_file


class Params(_train.TrainParams):
    """Exactly the LoRA training parameters every trainer kind shares (engine/sdk/train.py)."""





INPUTS = {
    "model": "base HF checkpoint dir",
    "data": "JSONL of {prompt (as sent, chat template applied), completion}",
}
OUTPUTS = {"adapter": "peft LoRA adapter dir (+ tokenizer)"}


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    import torch

    qlora = params.quantization == "nf4" or (params.quantization == "auto" and torch.cuda.is_available())
    return _train.training_memory_estimate(
        inputs["model"], rank=params.lora_rank, target_modules=params.target_modules,
        sequences=params.batch_size, seq_len=params.max_length, qlora=qlora,
        chunk_size=params.logprob_chunk, with_reference=False)


def build_trainer(ctx: StageContext, params: Params, out_dir: Path, telemetry: _train.Telemetry):
    """The configured SFTTrainer (LoRA attached, chunked log-prob head installed)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    _train.quiet_datasets()
    rows = _train.read_jsonl(ctx.inputs["data"], ("prompt", "completion"))
    _train.require_clean(ctx, rows, ctx.inputs["data"], params.eval_data_dir, params.humaneval_path,
                         params.allow_eval_overlap, params.humaneval_plus, params.mbpp_plus)
    tokenizer = AutoTokenizer.from_pretrained(ctx.inputs["model"])
    model = _train.load_base(ctx, ctx.inputs["model"], params)
    cuda = ctx.device.startswith("cuda")
    args = SFTConfig(**_train.trainer_args(params, out_dir, ctx.seed, cuda), completion_only_loss=True, packing=False)
    trainer = _train.make_trainer(SFTTrainer, ctx, params, model=model, args=args, tokenizer=tokenizer,
                                  dataset=Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]),
                                  telemetry=telemetry, rows=len(rows))
    return trainer, tokenizer


def run(ctx: StageContext, params: Params) -> None:
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(ctx.inputs["model"]).vocab_size
    fingerprint = _train.input_fingerprint(params.model_dump(), dict(ctx.inputs))
    out_dir, resume = _train.prepare_output_dir(ctx, fingerprint)
    telemetry = _train.Telemetry(ctx, _train.sft_loss_check(vocab), _train.resume_step(resume))
    trainer, tokenizer = build_trainer(ctx, params, out_dir, telemetry)
    _train.run_trainer(trainer, ctx, resume)
    if not telemetry.losses:
        raise StageFailed("training logged no loss (no steps ran?)")
    adapter = _train.publish_adapter(ctx, trainer, tokenizer)
    first, last = telemetry.losses[0][1], telemetry.losses[-1][1]
    ctx.record_result({
        "benchmark": "sft",
        "model_hash": content_hash(adapter),
        "model_path": str(adapter),
        "dataset_hash": sha256_file(ctx.inputs["data"]),
        "protocol": {"params": params.model_dump(), "base_model_hash": fingerprint["inputs"]["model"],
                     "seed": ctx.seed, "device": ctx.device,
                     "base_weights": _train.base_weights(trainer.model)},
        "metrics": {"first_loss": first, "last_loss": last, "steps": float(trainer.state.global_step),
                    "ln_vocab": math.log(vocab)},
        "resumed_from": resume,
    })
