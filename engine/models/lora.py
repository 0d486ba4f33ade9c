"""A peft LoRA adapter read and folded into its base checkpoint, one tensor at a time.

Every adapter tensor must land on a base tensor: an adapter whose names match nothing
(the original matched 0 of 339 silently) fails with the unmatched names listed. DoRA and
other non-linear adapters are refused. delta = (B @ A) * alpha / r (rsLoRA alpha/sqrt(r)),
computed in fp32 and stored in the base's dtype. Peak memory is one output shard plus a
few copies of the largest tensor, whatever the number of layers. Used by the `merge` kind,
by `dpo` (an SFT adapter as its model) and by `ties` (adapters as specialists).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine.failures import StageFailed
from engine.models.checkpoint import CheckpointReader, open_checkpoint
from engine.models.checkpoint_writer import (
    ShardedWriter,
    copy_side_files,
    set_config_dtype,
    storage_dtype,
)
from engine.models.files import safetensors_header
from pmat_kernels.lora import lora_scale, merge_lora_

PREFIX = "base_model.model."
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
LORA_KEY = re.compile(r"^(?P<mod>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A|lora_embedding_B)$")


@dataclass
class LoraModule:
    """One adapted base weight: W += (B @ A) * scale (transposed for embeddings)."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float
    transpose: bool


@dataclass
class LoraAdapter:
    """A parsed peft LoRA adapter, keyed by the base tensor names it changes."""

    path: Path
    modules: dict[str, LoraModule] = field(default_factory=dict)
    bias_deltas: dict[str, tuple[torch.Tensor, float]] = field(default_factory=dict)
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)

    def targets(self) -> set[str]:
        return set(self.modules) | set(self.bias_deltas) | set(self.replacements)

    def check_against(self, base: CheckpointReader) -> None:
        """Every target must be a base tensor of the right shape, else StageFailed."""
        if not self.targets():
            raise StageFailed(f"{self.path}: the adapter holds no LoRA or saved tensors; nothing would be merged")
        unmatched = sorted(n for n in self.targets() if n not in base)
        if unmatched:
            raise StageFailed(
                f"{self.path}: {len(unmatched)} of {len(self.targets())} adapter targets match no tensor of "
                f"{base.root}: {', '.join(unmatched)}"
            )
        for name, mod in self.modules.items():
            rows, cols = mod.b.shape[0], mod.a.shape[1]
            shape = (cols, rows) if mod.transpose else (rows, cols)
            if base.shape(name) != shape:
                raise StageFailed(f"{self.path}: LoRA delta for {name} is {shape}, base tensor is {base.shape(name)}")
        for name, t in self.replacements.items():
            if base.shape(name) != tuple(t.shape):
                raise StageFailed(f"{self.path}: saved {name} is {tuple(t.shape)}, base tensor is {base.shape(name)}")

    def apply_(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """The adapted value of base tensor ``name`` given its fp32 value (modified in place)."""
        if name in self.replacements:
            weight.copy_(self.replacements[name])
        if name in self.modules:
            m = self.modules[name]
            merge_lora_(weight, m.a, m.b, m.scale, fan_in_fan_out=m.transpose)
        if name in self.bias_deltas:
            bias, scale = self.bias_deltas[name]
            weight.add_(bias.to(weight.device, torch.float32), alpha=scale)
        return weight


def _pattern_value(patterns: dict[str, float], module: str, default: float) -> float:
    """peft's rank/alpha pattern lookup: a key matches a module name suffix."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def load_adapter(adapter_dir: Path) -> LoraAdapter:
    """Parse a peft LoRA adapter directory; refuse what is not a plain linear LoRA."""
    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise StageFailed(f"{adapter_dir}: no {ADAPTER_CONFIG} (not a peft adapter)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise StageFailed(f"{cfg_path}: not JSON: {exc}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("r"), int) or not isinstance(cfg.get("lora_alpha"), int | float):
        raise StageFailed(f"{cfg_path}: expected a JSON object with integer 'r' and numeric 'lora_alpha'")
    if cfg.get("peft_type") != "LORA":
        raise StageFailed(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not LORA; only LoRA adapters merge")
    if cfg.get("use_dora"):
        raise StageFailed(f"{cfg_path}: use_dora is true; a DoRA adapter is not a linear delta and cannot be merged as B@A")
    weights_path = adapter_dir / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        raise StageFailed(f"{adapter_dir}: no {ADAPTER_WEIGHTS} (convert .bin adapters to safetensors)")
    try:
        safetensors_header(weights_path)
    except ValueError as exc:
        raise StageFailed(str(exc)) from None
    tensors = load_file(weights_path)
    if any("lora_magnitude_vector" in k for k in tensors):
        raise StageFailed(f"{weights_path}: holds lora_magnitude_vector (DoRA); not a linear delta, refused")
    alpha, rslora = float(cfg["lora_alpha"]), bool(cfg.get("use_rslora"))
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
    alpha_pattern = cfg.get("alpha_pattern") or {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    out = LoraAdapter(adapter_dir)
    for key, t in tensors.items():
        name = key.removeprefix(PREFIX)
        m = LORA_KEY.match(name)
        if m:
            parts.setdefault(m["mod"], {})[m["part"]] = t
        else:  # a saved full tensor (modules_to_save, saved embeddings): replaces the base one
            out.replacements[name.replace(".base_layer.", ".")] = t
    for mod, p in sorted(parts.items()):
        emb = "lora_embedding_A" in p or "lora_embedding_B" in p
        a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if emb else ("lora_A.weight", "lora_B.weight")
        if a_key not in p or b_key not in p:
            raise StageFailed(f"{weights_path}: module {mod} has {sorted(p)} but needs both {a_key} and {b_key}")
        a, b = p[a_key], p[b_key]
        r = a.shape[0]
        declared = int(_pattern_value(cfg.get("rank_pattern") or {}, mod, cfg["r"]))
        if r != declared:
            raise StageFailed(f"{cfg_path}: r = {declared} for {mod}, but {weights_path.name} holds rank {r} "
                              f"({a_key} {tuple(a.shape)}): the config does not describe these tensors")
        scale = lora_scale(_pattern_value(alpha_pattern, mod, alpha), r, rslora)
        out.modules[f"{mod}.weight"] = LoraModule(a, b, scale, transpose=emb or fan_in_fan_out)
        if "lora_B.bias" in p:
            out.bias_deltas[f"{mod}.bias"] = (p["lora_B.bias"], scale)
    return out


class _Scratch:
    """A reusable buffer: fresh multi-hundred-MB allocations cost more in page faults than
    the arithmetic done in them (3-4x a copy into warm memory, measured on CPU)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.buf = torch.empty(0, dtype=torch.uint8, device=device)

    def take(self, shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        need = torch.Size(shape).numel() * dtype.itemsize
        if self.buf.numel() < need:
            self.buf = torch.empty(need, dtype=torch.uint8, device=self.device)
        return self.buf[:need].view(dtype).view(shape)


@dataclass
class MergeReport:
    tensors: int
    merged: int
    replaced: int
    bytes_written: int
    seconds: float


def merge_adapter(
    base_dir: Path,
    adapter_dir: Path,
    out_dir: Path,
    *,
    out_dtype: str | None,
    max_shard_bytes: int,
    device: str = "cpu",
    on_tensor: Callable[[int, int], None] | None = None,
) -> MergeReport:
    """Stream ``base_dir`` through the adapter into ``out_dir`` (weights + side files);
    the fp32 arithmetic runs on ``device``, one tensor at a time."""
    t0 = time.perf_counter()
    base = open_checkpoint(base_dir)
    adapter = load_adapter(adapter_dir)
    adapter.check_against(base)
    targets = adapter.targets()
    names = list(base.iter_shard_order())
    out_dtypes = {n: storage_dtype(out_dtype, base.dtype(n)) if base.dtype(n).is_floating_point else base.dtype(n)
                  for n in names}
    layout = [(n, out_dtypes[n], base.shape(n)) for n in names]
    raw, work, out = _Scratch("cpu"), _Scratch(device), _Scratch("cpu")
    with ShardedWriter(out_dir, max_shard_bytes, layout=layout) as writer:
        for i, name in enumerate(names):
            shape, dtype = base.shape(name), out_dtypes[name]
            if name in targets or dtype != base.dtype(name):
                src = base.read_into(name, raw.take(shape, base.dtype(name)))
                if name in targets:
                    src = adapter.apply_(name, work.take(shape, torch.float32).copy_(src))
                writer.add(name, out.take(shape, dtype).copy_(src))  # written through: buffers free again
            else:
                writer.copy_from(base, name)  # unchanged: file to file in the kernel
            if on_tensor:
                on_tensor(i + 1, len(names))
    copy_side_files(base_dir, out_dir)
    if out_dtype is not None:
        set_config_dtype(out_dir, storage_dtype(out_dtype, torch.float32))
    return MergeReport(
        tensors=len(names),
        merged=len(adapter.modules),
        replaced=len(adapter.replacements),
        bytes_written=writer.total_bytes,
        seconds=time.perf_counter() - t0,
    )
