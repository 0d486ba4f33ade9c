"""TIES merging (trim, elect sign, disjoint merge) and SLERP, on fp32 tensors.

TIES as mergekit does it, per tensor: keep the top k = int(density * numel) entries of
each delta by magnitude; weight them; elect the sign of their sum (>= 0 counts +); keep
entries agreeing with it; divide their sum by the sum of the agreeing weights (0 -> 1);
scale by lambda. The TIES paper trims over the whole model instead: ``KthLargest`` finds
that model-wide threshold exactly in two streamed passes (16-bit radix histograms), so
no model ever has to sit in memory whole.

References (``*_ref``) sort; the fast paths use ``kthvalue``/histograms. Both keep exactly
k entries: ties at the threshold are filled in flat index order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_BINS = 1 << 16
_CHUNK = 1 << 24  # elements per step of KthLargest: bounds its int64 temporaries to ~256 MB


def trim_ref(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Reference trim: keep the int(density*numel) largest |delta| (stable order on ties)."""
    _check_density(density)
    k = int(density * delta.numel())
    flat = delta.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    order = torch.sort(flat.abs(), descending=True, stable=True).indices[:k]
    keep[order] = True
    return (flat * keep).reshape(delta.shape)


def trim_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Fast trim mask: threshold by kthvalue, then fill threshold ties in index order."""
    _check_density(density)
    n = delta.numel()
    k = int(density * n)
    mag = delta.reshape(-1).abs()
    if k >= n:
        return torch.ones(delta.shape, dtype=torch.bool, device=delta.device)
    if k == 0:
        return torch.zeros(delta.shape, dtype=torch.bool, device=delta.device)
    thr = torch.kthvalue(mag, n - k + 1).values
    keep = mag > thr
    return _fill_ties(keep, mag == thr, k - int(keep.sum())).reshape(delta.shape)


def _fill_ties(keep: torch.Tensor, at_thr: torch.Tensor, want: int) -> torch.Tensor:
    """Add the first ``want`` threshold-equal entries (flat index order) to ``keep``."""
    if want > 0:
        idx = torch.nonzero(at_thr).reshape(-1)[:want]
        keep[idx] = True
    return keep


def _check_density(density: float) -> None:
    if not 0.0 < density <= 1.0:
        raise ValueError(f"TIES density must be in (0, 1], got {density}")


def elect_sign(weighted: torch.Tensor) -> torch.Tensor:
    """Elected sign per entry of stacked weighted deltas (K, ...): +1 where the sum >= 0."""
    return torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(weighted.dtype)


def disjoint_merge(
    trimmed: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merged delta of trimmed deltas and the agreement mask (K, ...).

    Entries whose sign differs from the elected sign, and zeros, are dropped; the rest
    are summed with their weights and (``normalize``) divided by the agreeing weights.
    """
    if len(trimmed) != len(weights) or not trimmed:
        raise ValueError(f"TIES needs one weight per model: {len(trimmed)} deltas, {len(weights)} weights")
    w = torch.tensor(list(weights), dtype=torch.float32, device=trimmed[0].device)
    w = w.reshape(-1, *([1] * trimmed[0].dim()))
    weighted = torch.stack(list(trimmed)) * w
    agree = torch.sign(weighted) == elect_sign(weighted)
    merged = (weighted * agree).sum(dim=0)
    if normalize:
        divisor = (w * agree).sum(dim=0)
        merged = merged / torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    return merged, agree


def ties_ref(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    lam: float,
    normalize: bool,
) -> torch.Tensor:
    """Reference per-tensor TIES (as mergekit) in fp32."""
    b = base.float()
    trimmed = [trim_ref(m.float() - b, d) for m, d in zip(models, densities, strict=True)]
    merged, _ = disjoint_merge(trimmed, weights, normalize)
    return b + lam * merged


def sign_conflicts(deltas: Sequence[torch.Tensor]) -> int:
    """Entries where the nonzero deltas do not all share one sign (a naive sum mixes them)."""
    stacked = torch.stack(list(deltas))
    return int(((stacked > 0).any(dim=0) & (stacked < 0).any(dim=0)).sum())


class KthLargest:
    """Exact k-th largest |x| over a stream of tensors, in two passes.

    Non-negative fp32 values order like their int32 bit patterns: pass 1 histograms the
    high 16 bits, pass 2 the low 16 bits inside the bin that holds the k-th value.
    ``keep_mask`` then keeps everything above the threshold plus exactly enough
    threshold-equal entries, in stream order, to make k.
    """

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"KthLargest needs k >= 1, got {k}")
        self.k = k
        self.hist = torch.zeros(_BINS, dtype=torch.int64)
        self.pass_no = 1
        self.high: int | None = None
        self.above = 0  # entries strictly above the current bin
        self.threshold_bits: int | None = None
        self.ties_left = 0

    @staticmethod
    def _bits(x: torch.Tensor) -> torch.Tensor:
        return x.detach().reshape(-1).float().abs().view(torch.int32).to(torch.int64)

    def update(self, x: torch.Tensor) -> None:
        """Feed one tensor of the stream (same order in both passes)."""
        for chunk in x.detach().reshape(-1).split(_CHUNK):
            bits = self._bits(chunk)
            if self.pass_no == 1:
                self.hist += torch.bincount(bits >> 16, minlength=_BINS).cpu()
            else:
                sel = bits[(bits >> 16) == self.high] & 0xFFFF
                self.hist += torch.bincount(sel, minlength=_BINS).cpu()

    def _locate(self, want: int) -> tuple[int, int]:
        """Bin holding the want-th largest and the count strictly above that bin."""
        from_top = torch.flip(self.hist, [0]).cumsum(0)
        pos = int(torch.searchsorted(from_top, torch.tensor(want)))
        if pos >= _BINS:
            raise ValueError(f"KthLargest: k={self.k} exceeds the {int(from_top[-1])} values streamed")
        above = int(from_top[pos - 1]) if pos > 0 else 0
        return _BINS - 1 - pos, above

    def end_pass(self) -> None:
        """Finish a pass: after pass 1 narrow to a bin, after pass 2 fix the threshold."""
        if self.pass_no == 1:
            self.high, self.above = self._locate(self.k)
            self.hist.zero_()
            self.pass_no = 2
        elif self.pass_no == 2:
            low, above_in_bin = self._locate(self.k - self.above)
            self.threshold_bits = (self.high << 16) | low
            self.ties_left = self.k - self.above - above_in_bin
            self.pass_no = 3
        else:
            raise RuntimeError("KthLargest: both passes already done")

    @property
    def threshold(self) -> float:
        if self.threshold_bits is None:
            raise RuntimeError("KthLargest: threshold not known before two passes")
        return torch.tensor([self.threshold_bits], dtype=torch.int32).view(torch.float32).item()

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """Mask of the entries of ``x`` among the k largest (call in stream order)."""
        if self.threshold_bits is None:
            raise RuntimeError("KthLargest: keep_mask before both passes")
        flat = x.detach().reshape(-1)
        out = torch.empty(flat.shape, dtype=torch.bool, device=flat.device)
        for start in range(0, flat.numel(), _CHUNK):
            bits = self._bits(flat[start : start + _CHUNK])
            keep = bits > self.threshold_bits
            at = bits == self.threshold_bits
            take = min(int(at.sum()), self.ties_left)
            self.ties_left -= take
            out[start : start + bits.numel()] = _fill_ties(keep, at, take)
        return out.reshape(x.shape)


def global_trim_ref(deltas: Sequence[torch.Tensor], density: float) -> list[torch.Tensor]:
    """Reference whole-model trim: concatenate every tensor of one model and keep the top k."""
    flat = torch.cat([d.reshape(-1).float() for d in deltas])
    kept = trim_ref(flat, density)
    out, pos = [], 0
    for d in deltas:
        out.append(kept[pos : pos + d.numel()].reshape(d.shape))
        pos += d.numel()
    return out


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation as mergekit: angle from the normalised flattened tensors,
    applied to the unnormalised ones; nearly parallel tensors fall back to lerp."""
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"SLERP t must be in [0, 1], got {t}")
    a, b = v0.float(), v1.float()
    na, nb = a.norm(), b.norm()
    dot = float((a / na.clamp_min(eps) * (b / nb.clamp_min(eps))).sum())
    if abs(dot) > dot_threshold:
        return torch.lerp(a, b, t)
    theta = math.acos(max(-1.0, min(1.0, dot)))
    s0 = math.sin((1 - t) * theta) / math.sin(theta)
    s1 = math.sin(t * theta) / math.sin(theta)
    return s0 * a + s1 * b
