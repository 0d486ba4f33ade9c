"""Stage `prune`: Wanda (|W| * ||X_j||) or magnitude pruning of every decoder linear layer.

Wanda's calibration is sequential, as in the paper: the calibration batches' inputs to
layer 0 are captured with hooks, then layer by layer the input norms of its linear
layers are gathered with forward hooks, the layer is pruned, and its (pruned) outputs
become the next layer's inputs. Magnitude pruning needs no model run and streams the
checkpoint tensor by tensor. Embeddings, norms and lm_head are never pruned. The output
keeps the source dtype and side files; a sparsity report per tensor goes to the metrics
and to the results ledger (benchmark "prune"). Perplexity is the `perplexity` stage's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import model_validator

from engine.models.checkpoint import open_checkpoint
from engine.models.checkpoint_writer import ShardedWriter, copy_side_files
from engine.sdk.base import StageContext, StageFailed, StageParams
from pmat_kernels.wanda import ActNorm, prune_mask, wanda_scores

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Calibration(StageParams):
    nsamples: int  # calibration sequences (Wanda: 128)
    seqlen: int  # tokens per sequence


class Params(StageParams):
    method: Literal["wanda", "magnitude"]
    pattern: Literal["unstructured", "2:4"]
    sparsity: float  # fraction pruned per output row (2:4 means exactly 0.5)
    calibration: Calibration | None = None  # required for wanda, refused for magnitude
    batch_size: int = 8
    max_shard_bytes: int = 4 << 30  # output file size only: shards are written through

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}")
        if self.pattern == "2:4" and self.sparsity != 0.5:
            raise ValueError(f"pattern '2:4' prunes exactly half: sparsity must be 0.5, got {self.sparsity}")
        if (self.method == "wanda") != (self.calibration is not None):
            need = "needs" if self.method == "wanda" else "takes no"
            raise ValueError(f"method {self.method!r} {need} a 'calibration' block")
        return self


INPUTS = {
    "model": "HF checkpoint dir",
    "calibration": "calibration text: .jsonl with a 'text' field per line, or plain text (unused by magnitude)",
}
OUTPUTS = {"model": "pruned HF checkpoint dir (same dtype, side files)"}


def _is_target(name: str) -> bool:
    parts = name.split(".")
    return name.endswith(".weight") and ".layers." in name and len(parts) >= 3 and parts[-2] in LINEAR


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    ckpt = open_checkpoint(inputs["model"])
    largest = max(ckpt.nbytes(n) // ckpt.dtype(n).itemsize for n in ckpt.names()) * 4
    if params.method == "magnitude":
        return 4 * largest + (700 << 20)
    calib = params.calibration
    assert calib is not None
    acts = calib.nsamples * calib.seqlen * int(ckpt.config.get("hidden_size", 0)) * 4 * 3
    return ckpt.total_bytes() + acts + 4 * largest + (1500 << 20)


def load_calibration(path: Path, tokenizer: Any, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens from the concatenated texts."""
    path = Path(path)
    raw = path.read_text()
    if path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                obj = json.loads(line)
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise StageFailed(f"{path}:{i}: expected an object with a string 'text' field")
                texts.append(obj["text"])
    else:
        texts = [raw]
    sep = tokenizer.eos_token or ""
    ids = tokenizer(sep.join(texts), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if ids.numel() < seqlen:
        raise StageFailed(f"{path}: {ids.numel()} tokens of calibration text, need at least seqlen={seqlen}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen + 1, (nsamples,), generator=gen)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


class _Stop(Exception):
    """Raised by the last layer's hook: the capture forward needs go no further."""


def _capture_layer_inputs(model: Any, batches: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[list[dict]]]:
    """Layer-0 hidden states per batch and every layer's keyword arguments per batch."""
    layers = model.model.layers
    hidden: list[torch.Tensor] = []
    kwargs: list[list[dict]] = []

    def pre_hook(i: int):
        def hook(_mod, args, kw):
            if i == 0:
                hidden.append(args[0] if args else kw["hidden_states"])
                kwargs.append([])
            kwargs[-1].append({k: v for k, v in kw.items() if k != "hidden_states"})
            if i == len(layers) - 1:
                raise _Stop
        return hook

    handles = [layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        for ids in batches:
            try:
                model(input_ids=ids, use_cache=False)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    return hidden, kwargs


def _wanda(ctx: StageContext, params: Params, model_dir: Path) -> dict[str, torch.Tensor]:
    """Prune the loaded model layer by layer; returns its pruned weights (on the device) by name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    calib = params.calibration
    assert calib is not None
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = load_calibration(ctx.inputs["calibration"], tok, calib.nsamples, calib.seqlen, ctx.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to(ctx.device).eval()  # no accelerate needed
    batches = [b.to(ctx.device) for b in ids.split(params.batch_size)]
    pruned: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        hidden, kwargs = _capture_layer_inputs(model, batches)
        layers = model.model.layers
        for li, layer in enumerate(layers):
            ctx.check_cancelled()
            linears = {n: m for n, m in layer.named_modules() if n.rsplit(".", 1)[-1] in LINEAR}
            norms = {n: ActNorm(m.in_features, ctx.device) for n, m in linears.items()}
            handles = [m.register_forward_hook(lambda _m, inp, _o, a=norms[n]: a.add(inp[0])) for n, m in linears.items()]
            for h, kw in zip(hidden, kwargs, strict=True):
                layer(h, **kw[li])
            for handle in handles:
                handle.remove()
            for n, m in linears.items():
                scores = wanda_scores(m.weight, norms[n].norm())
                m.weight[prune_mask(scores, params.pattern, params.sparsity)] = 0
                pruned[f"model.layers.{li}.{n}.weight"] = m.weight.detach()
            hidden = [_first(layer(h, **kw[li])) for h, kw in zip(hidden, kwargs, strict=True)]
            ctx.progress(li + 1, len(layers), "layers")
    return pruned


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def run(ctx: StageContext, params: Params) -> None:
    out = ctx.work_dir / "model"
    if out.exists():  # one pass: a new attempt starts over
        shutil.rmtree(out)
    model_dir = ctx.inputs["model"]
    reader = open_checkpoint(model_dir)
    targets = [n for n in reader.names() if _is_target(n)]
    if not targets:
        raise StageFailed(f"{model_dir}: no decoder linear weights (model.layers.*.{{{','.join(LINEAR)}}}.weight)")
    pruned = _wanda(ctx, params, model_dir) if params.method == "wanda" else {}
    report: dict[str, float] = {}
    zeros = total = 0
    layout = [(n, reader.dtype(n), reader.shape(n)) for n in reader.iter_shard_order()]
    with ShardedWriter(out, params.max_shard_bytes, layout=layout) as writer:
        for i, name in enumerate(reader.iter_shard_order()):
            ctx.check_cancelled()
            if name not in targets:
                writer.copy_from(reader, name)  # unchanged: file to file
                continue
            if name in pruned:
                t = pruned.pop(name).to("cpu", reader.dtype(name))
            else:
                t = reader.get(name).clone()
                t[prune_mask(wanda_scores(t, None), params.pattern, params.sparsity)] = 0
            z = int((t == 0).sum())
            report[name] = z / t.numel()
            zeros, total = zeros + z, total + t.numel()
            ctx.metric("sparsity", report[name], step=i, tensor=name)
            writer.add(name, t)
    missing = sorted(set(targets) - set(report))
    if missing or pruned:
        raise StageFailed(f"pruned tensors do not match the checkpoint's: {', '.join(missing or sorted(pruned))}")
    copy_side_files(model_dir, out)
    overall = zeros / total
    ctx.metric("sparsity_overall", overall)
    ctx.publish("model", out)
    manifest = ctx.workspace.manifest(ctx.stage, "model") or {}
    calib_path = Path(ctx.inputs["calibration"])
    ctx.record_result(
        {
            "benchmark": "prune",
            "model_hash": manifest.get("sha256"),
            "model_path": manifest.get("path"),
            "dataset_hash": hashlib.sha256(calib_path.read_bytes()).hexdigest() if params.method == "wanda" else None,
            "protocol": {
                "method": params.method,
                "pattern": params.pattern,
                "sparsity": params.sparsity,
                "calibration": params.calibration.model_dump() if params.calibration else None,
                "seed": ctx.seed,
                "targets": list(LINEAR),
            },
            "metrics": {
                "sparsity": overall,
                "sparsity_min_tensor": min(report.values()),
                "sparsity_max_tensor": max(report.values()),
                "tensors_pruned": float(len(report)),
            },
            "per_tensor": report,
        }
    )
