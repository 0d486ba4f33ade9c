"""Random Qwen2-shaped checkpoints and LoRA adapters written tensor by tensor.

Benchmarks and memory tests need checkpoints of a real model's shape (the 7B one is
~15 GB) without downloading it or ever holding it in memory; these are written through
the streamed ``ShardedWriter``. The weights are random: only shapes, names and bytes
matter to merge speed and memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine.models.checkpoint_writer import ShardedWriter
from engine.workspace import atomic_write_json

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Shape:
    """The dimensions of a Qwen2 decoder model."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int


SHAPES = {
    # Qwen2.5-Coder-7B: 7.6 B parameters, ~15.2 GB in bf16.
    "7b": Shape(3584, 18944, 28, 28, 4, 152064),
    # A small stand-in that runs on a 2-core CPU in seconds (~150 M parameters).
    "small": Shape(1024, 2816, 8, 16, 2, 32000),
    "tiny": Shape(256, 512, 2, 4, 2, 1024),
}


def tensor_shapes(shape: Shape) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Qwen2ForCausalLM with untied embeddings, in file order."""
    h, i = shape.hidden_size, shape.intermediate_size
    kv = h // shape.num_attention_heads * shape.num_key_value_heads
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (shape.vocab_size, h)}
    for n in range(shape.num_hidden_layers):
        p = f"model.layers.{n}"
        out |= {
            f"{p}.input_layernorm.weight": (h,),
            f"{p}.self_attn.q_proj.weight": (h, h),
            f"{p}.self_attn.q_proj.bias": (h,),
            f"{p}.self_attn.k_proj.weight": (kv, h),
            f"{p}.self_attn.k_proj.bias": (kv,),
            f"{p}.self_attn.v_proj.weight": (kv, h),
            f"{p}.self_attn.v_proj.bias": (kv,),
            f"{p}.self_attn.o_proj.weight": (h, h),
            f"{p}.post_attention_layernorm.weight": (h,),
            f"{p}.mlp.gate_proj.weight": (i, h),
            f"{p}.mlp.up_proj.weight": (i, h),
            f"{p}.mlp.down_proj.weight": (h, i),
        }
    out["model.norm.weight"] = (h,)
    out["lm_head.weight"] = (shape.vocab_size, h)
    return out


def qwen2_config(shape: Shape, dtype: torch.dtype) -> dict:
    """A config.json transformers loads as Qwen2ForCausalLM."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "dtype": str(dtype).removeprefix("torch."),
        **asdict(shape),
    }


def build_checkpoint(
    out_dir: Path, shape: Shape, *, dtype: torch.dtype = torch.bfloat16, max_shard_bytes: int = 4 << 30, seed: int = 0
) -> Path:
    """Write a random checkpoint (norms = 1, everything else N(0, 0.02)) shard by shard."""
    gen = torch.Generator().manual_seed(seed)
    out_dir = Path(out_dir)
    with ShardedWriter(out_dir, max_shard_bytes) as writer:
        for name, dims in tensor_shapes(shape).items():
            if "norm" in name:
                t = torch.ones(dims, dtype=dtype)
            else:
                t = torch.empty(dims, dtype=torch.float32).normal_(0.0, 0.02, generator=gen).to(dtype)
            writer.add(name, t)
            del t
    atomic_write_json(out_dir / "config.json", qwen2_config(shape, dtype))
    atomic_write_json(out_dir / "generation_config.json", {"bos_token_id": 151643, "eos_token_id": [151645, 151643]})
    return out_dir


def build_adapter(
    out_dir: Path, base_dir: Path, shape: Shape, *, r: int, alpha: float, dtype: torch.dtype = torch.bfloat16, seed: int = 1
) -> Path:
    """A peft-format LoRA adapter on every linear layer with random A and B (B nonzero)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, dims in tensor_shapes(shape).items():
        mod = name.removesuffix(".weight")
        if not name.endswith(".weight") or mod.rsplit(".", 1)[-1] not in LINEAR:
            continue
        out_f, in_f = dims
        key = f"base_model.model.{mod}"
        tensors[f"{key}.lora_A.weight"] = (torch.randn(r, in_f, generator=gen) / in_f**0.5).to(dtype)
        tensors[f"{key}.lora_B.weight"] = (torch.randn(out_f, r, generator=gen) * 0.01).to(dtype)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    LoraConfig(r=r, lora_alpha=alpha, target_modules=list(LINEAR), task_type="CAUSAL_LM",
               base_model_name_or_path=str(base_dir)).save_pretrained(str(out_dir))
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out_dir
