"""Wanda pruning scores and masks (Sun et al. 2023), with magnitude as the baseline.

score[i, j] = |W[i, j]| * ||X_j||_2, where X_j is input feature j over the calibration
tokens. Scores are compared within each output row (unstructured: drop the lowest
int(in * sparsity) of every row) or within each group of 4 consecutive inputs (2:4:
drop the 2 lowest). Magnitude pruning is the same with ||X_j|| = 1.

Masks are True where a weight is pruned. The references sort (as Wanda's code does);
the fast paths use ``topk`` on the whole row / a (rows, groups, 4) view.
"""

from __future__ import annotations

import torch


class ActNorm:
    """Running sum of squares of a linear layer's input features (fp64 accumulator)."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu") -> None:
        self.sq = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        self.sq += x.double().pow(2).sum(dim=0)
        self.tokens += x.shape[0]

    def norm(self) -> torch.Tensor:
        """||X_j||_2 over every token seen, fp32."""
        return self.sq.sqrt().float()


def wanda_scores(weight: torch.Tensor, act_norm: torch.Tensor | None) -> torch.Tensor:
    """|W| * ||X_j|| (fp32); ``act_norm=None`` gives plain magnitude scores."""
    mag = weight.detach().float().abs()
    if act_norm is None:
        return mag
    if act_norm.shape != (weight.shape[1],):
        raise ValueError(f"activation norm of shape {tuple(act_norm.shape)} does not fit weight {tuple(weight.shape)}")
    return mag * act_norm.to(mag.device, torch.float32).unsqueeze(0)


def _n_prune(cols: int, sparsity: float) -> int:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return int(cols * sparsity)


def row_mask_ref(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Reference: per row, prune the int(cols*sparsity) lowest scores (stable sort)."""
    n = _n_prune(scores.shape[1], sparsity)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    idx = torch.sort(scores, dim=-1, stable=True).indices[:, :n]
    return mask.scatter_(1, idx, True)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Fast path: per-row ``topk`` of the lowest scores (one call for the whole matrix)."""
    n = _n_prune(scores.shape[1], sparsity)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if n == 0:
        return mask
    idx = torch.topk(scores, n, dim=1, largest=False, sorted=False).indices
    return mask.scatter_(1, idx, True)


def nm_mask_ref(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Reference N:M: in every group of m consecutive inputs prune the n lowest (loop)."""
    if scores.shape[1] % m:
        raise ValueError(f"{n}:{m} pruning needs in_features divisible by {m}, got {scores.shape[1]}")
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for start in range(0, scores.shape[1], m):
        idx = torch.topk(scores[:, start : start + m], n, dim=1, largest=False).indices
        mask.scatter_(1, start + idx, True)
    return mask


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Fast N:M mask: one topk over a (rows, groups, m) view."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"{n}:{m} pruning needs in_features divisible by {m}, got {cols}")
    grouped = scores.reshape(rows, cols // m, m)
    idx = torch.topk(grouped, n, dim=2, largest=False).indices
    mask = torch.zeros_like(grouped, dtype=torch.bool).scatter_(2, idx, True)
    return mask.reshape(rows, cols)


def prune_mask(scores: torch.Tensor, pattern: str, sparsity: float) -> torch.Tensor:
    """The mask the prune stage applies: 'unstructured' per row, or '2:4'."""
    if pattern == "unstructured":
        return row_mask(scores, sparsity)
    if pattern == "2:4":
        return nm_mask(scores, 2, 4)
    raise ValueError(f"pruning pattern {pattern!r}: expected 'unstructured' or '2:4'")
