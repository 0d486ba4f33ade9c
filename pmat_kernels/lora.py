"""LoRA delta: W' = W + (B @ A) * s, s = alpha / r (rsLoRA: alpha / sqrt(r)).

The original merge multiplied A and B element-wise; this is a matrix product of the
(out, r) up-projection with the (r, in) down-projection, computed in fp32.

``lora_delta_ref`` is the plain reference. ``merge_lora_`` is the fast path the merge
stage uses: one fused ``addmm_`` into the fp32 weight (no separate delta tensor), on
whatever device the weight lives on.
"""

from __future__ import annotations

import math

import torch


def lora_scale(alpha: float, r: int, use_rslora: bool) -> float:
    """peft's scaling: alpha / r, or alpha / sqrt(r) for rank-stabilised LoRA."""
    if r <= 0:
        raise ValueError(f"LoRA rank must be > 0, got {r}")
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def lora_delta_ref(a: torch.Tensor, b: torch.Tensor, scale: float, fan_in_fan_out: bool = False) -> torch.Tensor:
    """Reference delta in fp32: (B @ A) * scale, transposed for fan_in_fan_out layers."""
    if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
        raise ValueError(f"LoRA shapes do not chain: B {tuple(b.shape)} @ A {tuple(a.shape)}")
    delta = (b.double() @ a.double()) * scale
    return (delta.T if fan_in_fan_out else delta).float()


def merge_lora_(
    weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, fan_in_fan_out: bool = False
) -> torch.Tensor:
    """Add the LoRA delta into an fp32 ``weight`` in place (fast path) and return it."""
    if weight.dtype != torch.float32:
        raise ValueError(f"merge_lora_ needs an fp32 weight, got {weight.dtype}")
    a32 = a.to(weight.device, torch.float32)
    b32 = b.to(weight.device, torch.float32)
    if fan_in_fan_out:
        a32, b32 = b32.T, a32.T  # (B @ A).T = A.T @ B.T
    if weight.shape != (b32.shape[0], a32.shape[1]) or b32.shape[1] != a32.shape[0]:
        raise ValueError(
            f"LoRA delta B {tuple(b.shape)} @ A {tuple(a.shape)} does not fit weight {tuple(weight.shape)}"
        )
    return weight.addmm_(b32, a32, alpha=scale)
