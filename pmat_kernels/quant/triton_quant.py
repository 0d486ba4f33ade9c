"""Triton kernels for the two expensive scale searches (Q4_K's make_qkx2_quants and
Q6_K's make_qx_quants) and for Q8_0, byte-identical to the reference.

One program lane owns one sub-block; sub-blocks are the columns of ``X`` ``[n, N]`` so
element ``i`` of neighbouring sub-blocks is contiguous (coalesced loads). Sums run one
element at a time as in the C code; divisions and square roots use the IEEE-rounded
``div_rn`` / ``sqrt_rn`` and kernels launch with ``enable_fp_fusion=False`` so no multiply
and add is contracted into an FMA. Packing and the final code pass stay in torch
(``pmat_kernels.quant.vectorized``), which is exact element-wise on any device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from pmat_kernels.quant.formats import GROUP_MAX_EPS
from pmat_kernels.quant.trials import Q4K_TRIALS, Q6K_TRIALS

_BLOCK = 128


@triton.jit
def _nearest_int(v):
    s = v + 12582912.0
    return (s.to(tl.int32, bitcast=True) & 0x007FFFFF) - 0x00400000


@triton.jit
def _q4k_error(x_ptr, N, n, mask, av_x, isc, base, scale, mn, BLOCK: tl.constexpr):
    """Weighted squared error of a 32-value sub-block quantized as round(isc * (x - base)) in
    [0, 15] and restored as scale * l + mn (the reference's error loop, same operation order)."""
    err = tl.zeros([BLOCK], tl.float32)
    for i in tl.static_range(32):
        xi = tl.load(x_ptr + i * N + n, mask=mask, other=0.0)
        li = tl.minimum(tl.maximum(_nearest_int(isc * (xi - base)), 0), 15).to(tl.float32)
        diff = scale * li + mn - xi
        err += (av_x + tl.abs(xi)) * (diff * diff)
    return err


@triton.jit
def _q6k_sums(x_ptr, N, n, mask, isc, BLOCK: tl.constexpr):
    """sum(w x l) and sum(w l l), w = x^2, of a 16-value sub-block quantized as round(isc * x)
    in [-32, 31] (the reference's loop, same operation order)."""
    sumlx = tl.zeros([BLOCK], tl.float32)
    suml2 = tl.zeros([BLOCK], tl.float32)
    for i in tl.static_range(16):
        xi = tl.load(x_ptr + i * N + n, mask=mask, other=0.0)
        li = tl.minimum(tl.maximum(_nearest_int(isc * xi), -32), 31).to(tl.float32)
        w = xi * xi
        sumlx += (w * xi) * li
        suml2 += (w * li) * li
    return sumlx, suml2


@triton.jit
def _q4k_search_kernel(x_ptr, trial_ptr, scale_ptr, min_ptr, isc_ptr, base_ptr, N,
                       NTRIAL: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < N
    x0 = tl.load(x_ptr + n, mask=mask, other=0.0)
    sum_x2 = tl.zeros([BLOCK], tl.float32) + x0 * x0
    mn = x0
    mx = x0
    for i in tl.static_range(1, 32):
        xi = tl.load(x_ptr + i * N + n, mask=mask, other=0.0)
        sum_x2 += xi * xi
        mn = tl.where(xi < mn, xi, mn)
        mx = tl.where(xi > mx, xi, mx)
    av_x = tl.math.sqrt_rn(tl.math.div_rn(sum_x2, 32.0))
    sum_w = av_x + tl.abs(x0)
    sum_x = sum_w * x0
    for i in tl.static_range(1, 32):
        xi = tl.load(x_ptr + i * N + n, mask=mask, other=0.0)
        wi = av_x + tl.abs(xi)
        sum_w += wi
        sum_x += wi * xi
    mn = tl.where(mn > 0.0, 0.0, mn)
    flat = mx == mn
    iscale = tl.math.div_rn(15.0, mx - mn)
    scale = tl.math.div_rn(1.0, iscale)
    best = _q4k_error(x_ptr, N, n, mask, av_x, iscale, mn, scale, mn, BLOCK)
    l_isc = iscale
    l_base = mn
    cur_min = mn
    for t in range(NTRIAL):
        isc = tl.math.div_rn(tl.load(trial_ptr + t), mx - cur_min)
        sum_l = tl.zeros([BLOCK], tl.float32)
        sum_l2 = tl.zeros([BLOCK], tl.float32)
        sum_xl = tl.zeros([BLOCK], tl.float32)
        for i in tl.static_range(32):
            xi = tl.load(x_ptr + i * N + n, mask=mask, other=0.0)
            li = tl.minimum(tl.maximum(_nearest_int(isc * (xi - cur_min)), 0), 15).to(tl.float32)
            wl = (av_x + tl.abs(xi)) * li
            sum_l += wl
            sum_l2 += wl * li
            sum_xl += wl * xi
        D = sum_w * sum_l2 - sum_l * sum_l
        t_scale = tl.math.div_rn(sum_w * sum_xl - sum_x * sum_l, D)
        t_min = tl.math.div_rn(sum_l2 * sum_x - sum_l * sum_xl, D)
        pos = t_min > 0.0
        t_min = tl.where(pos, 0.0, t_min)
        t_scale = tl.where(pos, tl.math.div_rn(sum_xl, sum_l2), t_scale)
        cur = _q4k_error(x_ptr, N, n, mask, av_x, isc, cur_min, t_scale, t_min, BLOCK)
        upd = (D > 0.0) & (cur < best) & (flat == 0)
        best = tl.where(upd, cur, best)
        scale = tl.where(upd, t_scale, scale)
        l_isc = tl.where(upd, isc, l_isc)
        l_base = tl.where(upd, cur_min, l_base)
        cur_min = tl.where(upd, t_min, cur_min)
    scale = tl.where(flat, 0.0, scale)
    l_isc = tl.where(flat, float("nan"), l_isc)
    tl.store(scale_ptr + n, scale, mask=mask)
    tl.store(min_ptr + n, -cur_min, mask=mask)
    tl.store(isc_ptr + n, l_isc, mask=mask)
    tl.store(base_ptr + n, l_base, mask=mask)


@triton.jit
def _q6k_search_kernel(x_ptr, trial_ptr, scale_ptr, isc_ptr, N, EPS,
                       NTRIAL: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = n < N
    amax = tl.zeros([BLOCK], tl.float32)
    mx = tl.zeros([BLOCK], tl.float32)
    for i in tl.static_range(16):
        xi = tl.load(x_ptr + i * N + n, mask=mask, other=0.0)
        ax = tl.abs(xi)
        upd = ax > amax
        amax = tl.where(upd, ax, amax)
        mx = tl.where(upd, xi, mx)
    zero = amax < EPS
    l_isc = tl.math.div_rn(-32.0, mx)
    sumlx, suml2 = _q6k_sums(x_ptr, N, n, mask, l_isc, BLOCK)
    scale = tl.where(suml2 != 0.0, tl.math.div_rn(sumlx, suml2), 0.0)
    best = scale * sumlx
    for t in range(NTRIAL):
        isc = tl.math.div_rn(tl.load(trial_ptr + t), mx)
        sumlx, suml2 = _q6k_sums(x_ptr, N, n, mask, isc, BLOCK)
        upd = (suml2 > 0.0) & (sumlx * sumlx > best * suml2)
        new_scale = tl.math.div_rn(sumlx, suml2)
        scale = tl.where(upd, new_scale, scale)
        best = tl.where(upd, new_scale * sumlx, best)
        l_isc = tl.where(upd, isc, l_isc)
    scale = tl.where(zero, 0.0, scale)
    l_isc = tl.where(zero, float("nan"), l_isc)
    tl.store(scale_ptr + n, scale, mask=mask)
    tl.store(isc_ptr + n, l_isc, mask=mask)


@triton.jit
def _q8_0_kernel(x_ptr, d_ptr, q_ptr, NB, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = b < NB
    offs = b[:, None] * 32 + tl.arange(0, 32)[None, :]
    x = tl.load(x_ptr + offs, mask=mask[:, None], other=0.0)
    d = tl.math.div_rn(tl.max(tl.abs(x), axis=1), 127.0)
    inv = tl.where(d != 0.0, tl.math.div_rn(1.0, d), 0.0)
    v = x * inv[:, None]
    a = tl.abs(v)
    f = tl.floor(a)
    r = f + tl.floor((a - f) * 2.0)  # roundf: halves away from zero, exactly
    q = tl.where(v < 0.0, -r, r).to(tl.int8)
    tl.store(d_ptr + b, d.to(tl.float16), mask=mask)
    tl.store(q_ptr + offs, q, mask=mask[:, None])


def quantize_q8_0(x: Tensor) -> Tensor:
    """Q8_0 blocks ``[n_blocks, 34]`` from float32 ``x`` (numel a multiple of 32)."""
    x = x.contiguous()
    nb = x.numel() // 32
    d = torch.empty(nb, dtype=torch.float16, device=x.device)
    q = torch.empty(nb, 32, dtype=torch.int8, device=x.device)
    _q8_0_kernel[(triton.cdiv(nb, _BLOCK),)](x, d, q, nb, BLOCK=_BLOCK, enable_fp_fusion=False)
    return torch.cat([d.view(torch.uint8).view(nb, 2), q.view(torch.uint8)], 1)


_TABLES: dict[tuple[str, str], Tensor] = {}


def _table(name: str, values: list[float], device: torch.device) -> Tensor:
    key = (name, str(device))
    if key not in _TABLES:
        _TABLES[key] = torch.tensor(values, dtype=torch.float32, device=device)
    return _TABLES[key]


def q4k_search(X: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Triton twin of ``vectorized.q4k_search`` (``X`` ``[32, N]`` float32, contiguous)."""
    X = X.contiguous()
    N = X.shape[1]
    scale, the_min, l_isc, l_base = (torch.empty(N, dtype=torch.float32, device=X.device) for _ in range(4))
    grid = (triton.cdiv(N, _BLOCK),)
    _q4k_search_kernel[grid](X, _table("q4k", Q4K_TRIALS, X.device), scale, the_min, l_isc, l_base, N,
                             NTRIAL=len(Q4K_TRIALS), BLOCK=_BLOCK, enable_fp_fusion=False)
    return scale, the_min, l_isc, l_base


def q6k_search(X: Tensor) -> tuple[Tensor, Tensor]:
    """Triton twin of ``vectorized.q6k_search`` (``X`` ``[16, N]`` float32, contiguous)."""
    X = X.contiguous()
    N = X.shape[1]
    scale, l_isc = (torch.empty(N, dtype=torch.float32, device=X.device) for _ in range(2))
    grid = (triton.cdiv(N, _BLOCK),)
    _q6k_search_kernel[grid](X, _table("q6k", Q6K_TRIALS, X.device), scale, l_isc, N, GROUP_MAX_EPS,
                             NTRIAL=len(Q6K_TRIALS), BLOCK=_BLOCK, enable_fp_fusion=False)
    return scale, l_isc
