"""Vectorized torch path: the same bytes as ``pmat_kernels.quant.reference``, many blocks at once.

Bit identity needs the reference's float32 rounding at every step, so:

* element-wise work runs on whole tensors (each torch op rounds once, like the C code);
* sums the C code accumulates one element at a time are accumulated one element at a
  time here too, but across all sub-blocks at once: sub-blocks are laid out as columns of
  a ``[n, N]`` tensor and row ``i`` is added to a running ``[N]`` accumulator;
* divisions by or of a constant go through :func:`rdiv` / :func:`divc` (torch would use a
  reciprocal and round twice);
* no fused ops (addcmul, lerp, alpha=) that would round once where C rounds twice;
* sqrtf is taken in float64 and rounded once to float32 (torch's vectorized float32 CPU sqrt
  is off by one ulp now and then; a float64 root rounded to float32 is correctly rounded).

The scale searches (``q4k_search``, ``q6k_search``) are the expensive part; the Triton
backend replaces exactly these two functions and shares everything else.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from pmat_kernels._backend import pick_backend
from pmat_kernels.quant.formats import BLOCK, GROUP_MAX_EPS, MAGIC, QK_K, QType, row_bytes
from pmat_kernels.quant.trials import Q4K_TRIALS, Q6K_TRIALS

EPS = float(np.float32(GROUP_MAX_EPS))  # compared in float32, as ggml does


def nearest_int(v: Tensor) -> Tensor:
    """ggml nearest_int on a float32 tensor (int32 result)."""
    return ((v + MAGIC).view(torch.int32) & 0x007FFFFF) - 0x00400000


def rdiv(num: float, t: Tensor) -> Tensor:
    """``num / t`` rounded once (torch's scalar/tensor is reciprocal-then-multiply: two roundings)."""
    return torch.full_like(t, num) / t


def divc(t: Tensor, num: float) -> Tensor:
    """``t / num`` as a true division (CUDA turns a scalar divisor into a reciprocal multiply)."""
    return t / torch.full_like(t, num)


def seqsum(p: Tensor, from_zero: bool = True) -> Tensor:
    """Sum ``p`` over dim 0 one row at a time in float32 (C's ``s += p[i]`` loop)."""
    acc = p[0] + 0.0 if from_zero else p[0].clone()
    for i in range(1, p.shape[0]):
        acc = acc + p[i]
    return acc


def first_absmax(t: Tensor, dim: int) -> Tensor:
    """The element of largest magnitude along ``dim``, the first on ties (C's strict ``>`` scan;
    torch.argmax does not promise the first index on every device)."""
    a = t.abs()
    pos = torch.arange(t.shape[dim], device=t.device).view([-1 if d == dim % t.dim() else 1 for d in range(t.dim())])
    idx = torch.where(a == a.amax(dim, keepdim=True), pos, t.shape[dim]).amin(dim, keepdim=True)
    return t.gather(dim, idx.clamp_max(t.shape[dim] - 1)).squeeze(dim)


def roundf(v: Tensor) -> Tensor:
    """C roundf (halves away from zero), exact for float32."""
    a = v.abs()
    f = torch.floor(a)
    return torch.copysign(f + torch.floor((a - f) * 2.0), v)


# ----------------------------------------------------------------------------- Q4_K


def q4k_search(X: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """make_qkx2_quants(32, 15, w = av_x + |x|, rmin -1, rdelta 0.1, 20 steps) per column.

    ``X`` is ``[32, N]`` (one sub-block per column). Returns ``(scale, the_min, l_isc,
    l_base)``: the winning trial's scale and negated min, and the iscale and min that
    produced its codes, so ``L = clamp(nearest_int(l_isc * (x - l_base)), 0, 15)``
    (``l_isc`` is NaN for flat sub-blocks, whose codes are 0).
    """
    sum_x2 = seqsum(X * X)
    av_x = torch.sqrt(divc(sum_x2, 32.0).double()).float()  # torch's float32 CPU sqrt is not correctly rounded
    W = av_x + X.abs()
    sum_w = seqsum(W, from_zero=False)
    sum_x = seqsum(W * X, from_zero=False)
    mx = X.amax(0)
    mn = X.amin(0)
    mn = torch.where(mn > 0, 0.0, mn)
    flat = mx == mn
    iscale = rdiv(15.0, mx - mn)
    scale = rdiv(1.0, iscale)
    L = nearest_int(iscale * (X - mn)).clamp(0, 15).float()
    diff = scale * L + mn - X
    best = seqsum(W * (diff * diff))
    l_isc, l_base, cur_min = iscale, mn, mn
    for num in Q4K_TRIALS:
        isc = rdiv(num, mx - cur_min)
        lx = nearest_int(isc * (X - cur_min)).clamp(0, 15).float()
        wl = W * lx
        sum_l = seqsum(wl)
        sum_l2 = seqsum(wl * lx)
        sum_xl = seqsum(wl * X)
        D = sum_w * sum_l2 - sum_l * sum_l
        t_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        t_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = t_min > 0
        t_min = torch.where(pos, 0.0, t_min)
        t_scale = torch.where(pos, sum_xl / sum_l2, t_scale)
        diff = t_scale * lx + t_min - X
        cur = seqsum(W * (diff * diff))
        upd = (D > 0) & (cur < best) & ~flat
        best = torch.where(upd, cur, best)
        scale = torch.where(upd, t_scale, scale)
        l_isc = torch.where(upd, isc, l_isc)
        l_base = torch.where(upd, cur_min, l_base)
        cur_min = torch.where(upd, t_min, cur_min)
    scale = torch.where(flat, 0.0, scale)
    l_isc = torch.where(flat, float("nan"), l_isc)
    return scale, -cur_min, l_isc, l_base


def _q4k_codes_from_search(X: Tensor, l_isc: Tensor, l_base: Tensor) -> Tensor:
    codes = nearest_int(l_isc * (X - l_base)).clamp(0, 15)
    return torch.where(torch.isnan(l_isc), 0, codes)


def quantize_q4_k(x: Tensor, search: Callable = q4k_search) -> Tensor:
    """``x``: float32, numel a multiple of 256 -> ``[n_blocks, 144]`` uint8."""
    nb = x.numel() // QK_K
    X = x.reshape(nb * 8, 32).t().contiguous()  # [32, N] one sub-block per column
    scale, the_min, l_isc, l_base = search(X)
    S, M = scale.view(nb, 8), the_min.view(nb, 8)
    max_s = S.amax(1)
    max_s = torch.where(max_s > 0, max_s, 0.0)  # C starts from +0 and keeps strictly larger
    max_m = M.amax(1)
    max_m = torch.where(max_m > 0, max_m, 0.0)
    inv_s = torch.where(max_s > 0, rdiv(63.0, max_s), 0.0)
    inv_m = torch.where(max_m > 0, rdiv(63.0, max_m), 0.0)
    ls = (nearest_int(inv_s[:, None] * S) & 0xFF).clamp_max(63)  # uint8_t wrap, then MIN(63)
    lm = (nearest_int(inv_m[:, None] * M) & 0xFF).clamp_max(63)
    d16 = divc(max_s, 63.0).half()
    m16 = divc(max_m, 63.0).half()
    d = (d16.float()[:, None] * ls.float()).reshape(-1)
    dm = (m16.float()[:, None] * lm.float()).reshape(-1)
    fresh = nearest_int((X + dm) / d).clamp(0, 15)
    L = torch.where(d != 0, fresh, _q4k_codes_from_search(X, l_isc, l_base))
    L = L.t().reshape(nb, 4, 2, 32).to(torch.uint8)
    qs = (L[:, :, 0] | (L[:, :, 1] << 4)).reshape(nb, 128)
    ls8, lm8 = ls.to(torch.uint8), lm.to(torch.uint8)
    packed = torch.cat(
        [
            ls8[:, :4] | ((ls8[:, 4:] >> 4) << 6),
            lm8[:, :4] | ((lm8[:, 4:] >> 4) << 6),
            (ls8[:, 4:] & 0xF) | ((lm8[:, 4:] & 0xF) << 4),
        ],
        dim=1,
    )
    return torch.cat([d16.view(torch.uint8).view(nb, 2), m16.view(torch.uint8).view(nb, 2), packed, qs], 1)


def dequantize_q4_k(blocks: Tensor) -> Tensor:
    nb = blocks.shape[0]
    d = blocks[:, 0:2].contiguous().view(torch.float16).float()
    dmin = blocks[:, 2:4].contiguous().view(torch.float16).float()
    s = blocks[:, 4:16].to(torch.int32)
    sc = torch.cat([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], 1)
    mn = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], 1)
    q = blocks[:, 16:].view(nb, 4, 1, 32).to(torch.int32)
    q = torch.cat([q & 0xF, q >> 4], 2).reshape(nb, 8, 32).float()
    return ((d * sc.float())[:, :, None] * q - (dmin * mn.float())[:, :, None]).reshape(nb, QK_K)


# ----------------------------------------------------------------------------- Q6_K


def q6k_search(X: Tensor) -> tuple[Tensor, Tensor]:
    """make_qx_quants(16, 32, rmse_type 1) per column of ``X`` ``[16, N]``.

    Returns ``(scale, l_isc)``; codes are ``clamp(nearest_int(l_isc * x), -32, 31) + 32``
    (``l_isc`` NaN for all-zero sub-blocks, whose codes are 0).
    """
    mxv = first_absmax(X, 0)
    zero = X.abs().amax(0) < EPS
    W = X * X
    WX = W * X

    def sums(isc: Tensor) -> tuple[Tensor, Tensor]:
        lx = nearest_int(isc * X).clamp(-32, 31).float()
        return seqsum(WX * lx), seqsum((W * lx) * lx)

    l_isc = rdiv(-32.0, mxv)
    sumlx, suml2 = sums(l_isc)
    scale = torch.where(suml2 != 0, sumlx / suml2, 0.0)
    best = scale * sumlx
    for num in Q6K_TRIALS:
        isc = rdiv(num, mxv)
        sumlx, suml2 = sums(isc)
        upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        new_scale = sumlx / suml2
        scale = torch.where(upd, new_scale, scale)
        best = torch.where(upd, new_scale * sumlx, best)
        l_isc = torch.where(upd, isc, l_isc)
    scale = torch.where(zero, 0.0, scale)
    l_isc = torch.where(zero, float("nan"), l_isc)
    return scale, l_isc


def quantize_q6_k(x: Tensor, search: Callable = q6k_search) -> Tensor:
    """``x``: float32, numel a multiple of 256 -> ``[n_blocks, 210]`` uint8."""
    nb = x.numel() // QK_K
    X = x.reshape(nb * 16, 16).t().contiguous()  # [16, N]
    scale, l_isc = search(X)
    S = scale.view(nb, 16)
    max_scale = first_absmax(S, 1)
    zero_block = S.abs().amax(1) < EPS
    iscale = rdiv(-128.0, max_scale)
    d16 = rdiv(1.0, iscale).half()
    sc = nearest_int(iscale[:, None] * S).clamp_max(127)
    d = (d16.float()[:, None] * sc.float()).reshape(-1)
    fresh = nearest_int(X / d).clamp(-32, 31) + 32
    fallback = torch.where(torch.isnan(l_isc), 0, nearest_int(l_isc * X).clamp(-32, 31) + 32)
    L = torch.where(d != 0, fresh, fallback).t().reshape(nb, 2, 4, 32).to(torch.uint8)
    q0, q1, q2, q3 = L[:, :, 0], L[:, :, 1], L[:, :, 2], L[:, :, 3]
    ql = torch.cat([(q0 & 0xF) | ((q2 & 0xF) << 4), (q1 & 0xF) | ((q3 & 0xF) << 4)], 2).reshape(nb, 128)
    qh = ((q0 >> 4) | ((q1 >> 4) << 2) | ((q2 >> 4) << 4) | ((q3 >> 4) << 6)).reshape(nb, 64)
    out = torch.cat([ql, qh, sc.to(torch.int8).view(torch.uint8), d16.view(torch.uint8).view(nb, 2)], 1)
    return torch.where(zero_block[:, None], 0, out).to(torch.uint8)


def dequantize_q6_k(blocks: Tensor) -> Tensor:
    nb = blocks.shape[0]
    ql = blocks[:, :128].view(nb, 2, 1, 64).to(torch.int32)
    qh = blocks[:, 128:192].view(nb, 2, 1, 32).to(torch.int32)
    sc = blocks[:, 192:208].contiguous().view(torch.int8).float()
    d = blocks[:, 208:210].contiguous().view(torch.float16).float()
    lo = torch.cat([ql & 0xF, ql >> 4], 2).reshape(nb, 2, 4, 32)
    hi = torch.cat([(qh >> s) & 3 for s in (0, 2, 4, 6)], 2)
    q = ((lo | (hi << 4)) - 32).reshape(nb, 16, 16).float()
    return ((d * sc)[:, :, None] * q).reshape(nb, QK_K)


# ----------------------------------------------------------------------------- Q8_0 / Q5_0


def quantize_q8_0(x: Tensor) -> Tensor:
    X = x.reshape(-1, 32)
    d = divc(X.abs().amax(1), 127.0)
    inv = torch.where(d != 0, rdiv(1.0, d), 0.0)
    q = roundf(X * inv[:, None]).to(torch.int8).view(torch.uint8)
    return torch.cat([d.half().view(torch.uint8).view(-1, 2), q], 1)


def dequantize_q8_0(blocks: Tensor) -> Tensor:
    d = blocks[:, :2].contiguous().view(torch.float16).float()
    return blocks[:, 2:].contiguous().view(torch.int8).float() * d


def quantize_q5_0(x: Tensor) -> Tensor:
    X = x.reshape(-1, 32)
    vmax = first_absmax(X, 1)[:, None]
    d = divc(vmax, -16.0)
    inv = torch.where(d != 0, rdiv(1.0, d), 0.0)
    q = torch.trunc(X * inv + 16.5).clamp_max(31).to(torch.int64)
    qh = (((q >> 4) & 1) << torch.arange(32, device=x.device)).sum(1)
    qh_bytes = torch.stack([(qh >> (8 * k)) & 0xFF for k in range(4)], 1).to(torch.uint8)
    qs = ((q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)).to(torch.uint8)
    return torch.cat([d.half().view(torch.uint8).view(-1, 2), qh_bytes, qs], 1)


def dequantize_q5_0(blocks: Tensor) -> Tensor:
    d = blocks[:, :2].contiguous().view(torch.float16).float()
    qh = blocks[:, 2:6].to(torch.int64)
    qh = qh[:, 0] | (qh[:, 1] << 8) | (qh[:, 2] << 16) | (qh[:, 3] << 24)
    hi = (qh[:, None] >> torch.arange(32, device=blocks.device)) & 1
    ql = blocks[:, 6:].to(torch.int64)
    lo = torch.cat([ql & 0xF, ql >> 4], 1)
    return d * ((lo | (hi << 4)) - 16).float()


# ----------------------------------------------------------------------------- dispatch

_DEQUANT = {
    QType.Q8_0: dequantize_q8_0,
    QType.Q5_0: dequantize_q5_0,
    QType.Q4_K: dequantize_q4_k,
    QType.Q6_K: dequantize_q6_k,
}


def quantize_blocks(x: Tensor, qtype: QType, backend: str = "torch") -> Tensor:
    """Quantize a float32 tensor (numel a multiple of the block) to ``[n_blocks, bytes]``;
    ``backend`` as ``pmat_kernels._backend.pick_backend`` reads it (the bytes are the same)."""
    backend = pick_backend("quantization", backend, x.device)
    if qtype == QType.Q8_0 and backend == "triton":
        from pmat_kernels.quant import triton_quant

        return triton_quant.quantize_q8_0(x)
    if qtype == QType.Q8_0:
        return quantize_q8_0(x)
    if qtype == QType.Q5_0:
        return quantize_q5_0(x)
    if backend == "triton":
        from pmat_kernels.quant import triton_quant

        q4, q6 = triton_quant.q4k_search, triton_quant.q6k_search
    else:
        q4, q6 = q4k_search, q6k_search
    if qtype == QType.Q4_K:
        return quantize_q4_k(x, q4)
    if qtype == QType.Q6_K:
        return quantize_q6_k(x, q6)
    raise ValueError(f"no quantizer for {qtype.name}")


def quantize(x: Tensor, qtype: QType, backend: str = "torch", chunk_weights: int | None = None) -> Tensor:
    """Quantize a 2-D weight ``[rows, n_per_row]`` to ``[rows, row_bytes]`` uint8 (GGML layout).

    Works in chunks of whole rows of about ``chunk_weights`` weights to bound temporaries
    (default 2^18 on CPU, where small chunks stay in cache, 2^24 on a GPU).
    F32/F16 are plain casts. Non-finite weights are rejected (ggml would write garbage).
    """
    if x.dim() != 2:
        raise ValueError(f"quantize wants a 2-D tensor, got shape {tuple(x.shape)}")
    rows, cols = x.shape
    if qtype == QType.F32:
        return x.float().contiguous().view(torch.uint8).view(rows, cols * 4)
    if qtype == QType.F16:
        return x.half().contiguous().view(torch.uint8).view(rows, cols * 2)
    rb = row_bytes(qtype, cols)
    out = torch.empty(rows, rb, dtype=torch.uint8, device=x.device)
    if chunk_weights is None:
        chunk_weights = 1 << 18 if x.device.type == "cpu" else 1 << 24
    step = max(1, chunk_weights // cols)
    threads = torch.get_num_threads()
    if x.device.type == "cpu":
        torch.set_num_threads(1)  # thousands of small row ops: intra-op threads only contend
    try:
        for r in range(0, rows, step):
            chunk = x[r : r + step].float().contiguous()
            if not bool(torch.isfinite(chunk).all()):
                raise ValueError(f"non-finite weights in rows {r}..{r + chunk.shape[0] - 1}")
            out[r : r + chunk.shape[0]] = quantize_blocks(chunk.reshape(-1), qtype, backend).view(chunk.shape[0], rb)
    finally:
        torch.set_num_threads(threads)
    return out


def dequantize(data: Tensor, qtype: QType, shape: tuple[int, ...]) -> Tensor:
    """Bytes in GGML layout -> float32 tensor of ``shape`` (same arithmetic as ggml/gguf)."""
    flat = data.reshape(-1)
    if qtype == QType.F32:
        return flat.view(torch.float32).reshape(shape).clone()
    if qtype == QType.F16:
        return flat.view(torch.float16).float().reshape(shape)
    _, size = BLOCK[qtype]
    return _DEQUANT[qtype](flat.view(-1, size)).reshape(shape)
