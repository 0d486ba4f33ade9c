"""Random-weight models at the real shapes, for the rehearsal pipeline (no hub, no download).

The student (Qwen2.5-Coder-7B shape, ~15 GB bf16) is written to disk like a real checkpoint:
every stage reads, merges and rewrites it as it would the real one. The teacher (32B shape,
~65 GB bf16) is only read by the distillation stage's sampler, and the rehearsal box's disk
(64 GiB) cannot hold it beside the student's descendants: its directory holds the config, the
tokenizer and ``RANDOM_MARKER`` (shape, dtype, seed), and the loader materialises the weights
directly in device memory at load time (``materialise``). Device memory, load-free compute
and the sampler's behaviour are those of the real teacher; its load time from disk is not,
and the rehearsal's figures say so.

The tokenizer is a byte-level BPE trained on the spot (engine/models/tiny.py); ids beyond it
decode to nothing, so completions of random weights are short garbage, which the sandbox
rejects quickly: generation cost is per token and stays real.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.models.checkpoint_writer import ShardedWriter
from engine.models.synthetic import SHAPES as _SYNTHETIC
from engine.models.synthetic import Shape, qwen2_config, tensor_shapes
from engine.models.tiny import train_tokenizer
from engine.random_source import RANDOM_MARKER
from engine.workspace import atomic_write_json

SHAPES: dict[str, Shape] = {
    **_SYNTHETIC,
    # Qwen2.5-Coder-32B: 32.8 B parameters, ~65.5 GB in bf16.
    "32b": Shape(5120, 27648, 64, 40, 8, 152064),
}
TOKENIZER_VOCAB = 4096  # what a BPE trained on HumanEval + seed code reaches (fewer merges exist)


def shape_of(name: str) -> Shape:
    if name not in SHAPES:
        raise ValueError(f"unknown model shape {name!r} (expected one of {', '.join(SHAPES)})")
    return SHAPES[name]


def _pad_vocab(tok, size: int):
    """The tokenizer with plain word tokens (" w1234") up to the model's vocabulary: every id a
    random model emits decodes to text (an unknown id would decode to nothing, and empty
    completions are not what the real model writes). Encoding never produces them (no merges)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads(tok.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    for i in range(len(vocab), size):
        vocab[f"\u0120w{i}"] = i
    padded = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), eos_token=tok.eos_token,
                                     pad_token=tok.pad_token, additional_special_tokens=["<|im_start|>"])
    padded.chat_template, padded.padding_side = tok.chat_template, tok.padding_side
    return padded


def _write_side_files(out_dir: Path, shape: Shape, dtype: torch.dtype) -> None:
    """Tokenizer (trained here) and a config whose special ids are the tokenizer's."""
    tok = _pad_vocab(train_tokenizer(min(TOKENIZER_VOCAB, shape.vocab_size)), shape.vocab_size)
    tok.save_pretrained(out_dir)
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    atomic_write_json(out_dir / "config.json", qwen2_config(shape, dtype) | {
        "bos_token_id": pad, "eos_token_id": eos, "pad_token_id": pad})
    atomic_write_json(out_dir / "generation_config.json",
                      {"bos_token_id": pad, "eos_token_id": [eos, pad], "pad_token_id": pad})


def _random(name: str, dims: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator, device: str) -> torch.Tensor:
    """Norms 1, biases 0, everything else N(0, 0.02): the init transformers uses."""
    if "norm" in name:
        return torch.ones(dims, dtype=dtype, device=device)
    if name.endswith(".bias"):
        return torch.zeros(dims, dtype=dtype, device=device)
    return torch.empty(dims, dtype=dtype, device=device).normal_(0.0, 0.02, generator=gen)


def build_model(out_dir: Path, shape_name: str, *, materialise: str, seed: int, device: str,
                dtype: torch.dtype = torch.bfloat16, progress=None) -> Path:
    """Write a random model of ``shape_name``: its weights on disk (``materialise='disk'``,
    drawn on ``device`` one tensor at a time, streamed into 4 GiB shards) or only the marker
    that has the loader draw them in memory (``'memory'``)."""
    if materialise not in ("disk", "memory"):
        raise ValueError(f"materialise must be 'disk' or 'memory', got {materialise!r}")
    shape = shape_of(shape_name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_side_files(out_dir, shape, dtype)
    if materialise == "memory":
        atomic_write_json(out_dir / RANDOM_MARKER, {"shape": shape_name, "seed": seed,
                                                    "dtype": str(dtype).removeprefix("torch.")})
        return out_dir
    gen = torch.Generator(device=device).manual_seed(seed)
    names = tensor_shapes(shape)
    with ShardedWriter(out_dir, 4 << 30) as writer:
        for i, (name, dims) in enumerate(names.items()):
            writer.add(name, _random(name, dims, dtype, gen, device).cpu())
            if progress is not None:
                progress(i + 1, len(names))
    return out_dir


def materialise(model_dir: Path | str, device: str, dtype: torch.dtype | None = None):
    """The model of a random source, drawn directly on ``device`` (never on the host, never on disk)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    marker = json.loads((Path(model_dir) / RANDOM_MARKER).read_text())
    dtype = dtype or getattr(torch, marker["dtype"])
    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(int(marker["seed"]))
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()
