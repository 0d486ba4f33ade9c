"""Stage `perplexity`: sliding-window perplexity of a model over a text file (AC-002, AC-008).

The method of transformers' perplexity guide: windows of ``window`` tokens advancing by
``stride``; each window scores only the tokens no earlier window scored, with the rest
of the window as context. PPL = exp(total NLL / scored tokens). Progress is kept in
``work/state.json`` after every window, so a resumed attempt continues where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from engine.sdk.base import StageContext, StageFailed, StageParams
from engine.workspace import atomic_write_json, content_hash, sha256_file


class Params(StageParams):
    window: int                      # tokens per forward pass (the model's context at most)
    stride: int                      # tokens a window advances; window == stride: no overlap
    max_tokens: int | None = None    # score only the first N tokens of the text
    dtype: str = "auto"


INPUTS = {"model": "HF checkpoint dir", "text": "UTF-8 text file to score"}
OUTPUTS: dict[str, str] = {}


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    """Weights (doubled when a bf16 checkpoint is read as float32) + three fp32 logit-sized buffers."""
    model = Path(inputs["model"])
    weights = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    factor = 2 if params.dtype in ("float32", "fp32") else 1
    vocab = int(json.loads((model / "config.json").read_text()).get("vocab_size", 152_064))
    return weights * factor + params.window * vocab * 4 * 3 + (1 << 30)


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) per window: the last ``scored`` tokens of [begin, end) are scored with the
    window as context. A window's first token has no context inside it, so it is never scored."""
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        scored = min(end - prev_end, end - begin - 1)
        if scored > 0:
            out.append((begin, end, scored))
        prev_end = end
        if end == n_tokens:
            break
    return out


def run(ctx: StageContext, params: Params) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.gen.hf import load_dtype, resolve_device

    if not 0 < params.stride <= params.window:
        raise StageFailed(f"perplexity: need 0 < stride <= window, got stride={params.stride} window={params.window}")
    t0 = time.monotonic()
    model_dir, text_path = ctx.inputs["model"], ctx.inputs["text"]
    text = Path(text_path).read_text(encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if params.max_tokens:
        ids = ids[: params.max_tokens]
    if len(ids) < 2:
        raise StageFailed(f"perplexity: {text_path} has {len(ids)} tokens; need at least 2")
    device = resolve_device(ctx.device)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=load_dtype(params.dtype, device)).to(device)
    model.eval()
    plan = windows(len(ids), params.window, params.stride)
    state_path = ctx.work_dir / "state.json"
    key = {"model": content_hash(model_dir), "text": sha256_file(text_path), "params": params.model_dump()}
    state = {"key": key, "next": 0, "nll": 0.0, "count": 0}
    if state_path.exists():
        saved = json.loads(state_path.read_text())
        if saved.get("key") == key:
            state = saved
    ctx.progress(state["next"], len(plan), "windows")
    with torch.inference_mode():
        for i in range(state["next"], len(plan)):
            ctx.check_cancelled()
            begin, end, scored = plan[i]
            chunk = ids[begin:end].unsqueeze(0).to(device)
            logits = model(chunk).logits[0, :-1].float()
            targets = chunk[0, 1:]
            nll = torch.nn.functional.cross_entropy(logits[-scored:], targets[-scored:], reduction="sum")
            state.update(next=i + 1, nll=state["nll"] + float(nll), count=state["count"] + scored)
            atomic_write_json(state_path, state)
            ctx.progress(i + 1, len(plan), "windows")
    mean = state["nll"] / state["count"]
    ppl = math.exp(mean)
    ctx.metric("perplexity", ppl)
    ctx.record_result({
        "benchmark": "perplexity", "model_hash": key["model"], "model_path": str(model_dir),
        "dataset_hash": key["text"], "dataset_path": str(text_path),
        "protocol": {"window": params.window, "stride": params.stride, "max_tokens": params.max_tokens,
                     "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")},
        "metrics": {"perplexity": ppl, "nll": mean, "tokens": float(state["count"])},
        "device": str(next(model.parameters()).device), "wall_s": round(time.monotonic() - t0, 3),
    })
