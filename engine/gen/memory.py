"""Memory a sampling job needs, for admission: weights + KV cache of the batch + logits."""

from __future__ import annotations

import json
from pathlib import Path

DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "float32": 4, "fp32": 4}
OVERHEAD = 1 << 30  # torch/transformers runtime, allocator slack


def kv_bytes_per_token(config: dict, dtype_bytes: int) -> int:
    """K and V of every layer for one token (Qwen2.5-7B bf16: 56 KiB)."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * config.get("num_key_value_heads", heads) * head_dim * dtype_bytes


def param_count(config: dict) -> int:
    """Parameters of a Qwen2/Llama-layout decoder, from its config."""
    h, v, layers = config["hidden_size"], config["vocab_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or h // heads
    kv = config.get("num_key_value_heads", heads) * head_dim
    attn = h * heads * head_dim * 2 + h * kv * 2 + heads * head_dim + 2 * kv
    mlp = 3 * h * config["intermediate_size"]
    head = 0 if config.get("tie_word_embeddings") else v * h
    return v * h + head + layers * (attn + mlp + 2 * h) + h


def sampling_bytes(model_dir: Path, rows: int, max_len: int, dtype: str = "auto") -> int:
    """Weights + static KV cache (rows x max_len) + float32 logits and sort buffers + overhead.

    ``dtype`` 'auto' counts 2 bytes (bf16 on the GPU); a CPU float32 run passes 'float32'.
    """
    from engine.gen.base import gguf_file

    if (gguf := gguf_file(model_dir)) is not None:
        from engine.gen.llamacpp import gguf_memory_bytes

        return gguf_memory_bytes(gguf, max_len)
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read model config for the memory estimate ({exc})") from None
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r} for the memory estimate (expected one of {', '.join(DTYPE_BYTES)})")
    b = DTYPE_BYTES[dtype]
    weights = param_count(config) * b
    kv = rows * max_len * kv_bytes_per_token(config, b)
    logits = rows * config["vocab_size"] * 4 * 4  # logits, sorted values, probs, cdf (float32)
    return weights + kv + logits + OVERHEAD
