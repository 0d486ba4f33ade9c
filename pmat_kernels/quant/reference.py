"""Reference port of llama.cpp's reference quantizers (ggml-quants.c), written for clarity.

Every arithmetic step is a float32 operation in the order the C code performs it (sums are
accumulated one element at a time, no fused multiply-add), ``nearest_int`` is ggml's
magic-number rounding, and the fp16 scales are rounded to nearest-even exactly where ggml
rounds them. This is the definition the vectorized and Triton paths are pinned to; it is
slow on purpose (one block at a time, scalar loops).

Functions take a 1-D float32 array whose length is a multiple of the block size and return
the packed bytes (``np.uint8``), or the reverse for ``dequantize_*``.
"""

from __future__ import annotations

import math

import numpy as np

from pmat_kernels.quant.formats import GROUP_MAX_EPS, MAGIC, QK_K

F = np.float32
_MAGIC = F(MAGIC)
_EPS = F(GROUP_MAX_EPS)


def nearest_int(v: np.float32) -> int:
    """ggml nearest_int: add 1.5*2^23 in float32, read the mantissa (ties to even)."""
    bits = int(np.array(F(v) + _MAGIC, dtype=F).view(np.int32))
    return (bits & 0x007FFFFF) - 0x00400000


def roundf(v: np.float32) -> int:
    """C roundf: nearest integer, halves away from zero (exact in float64)."""
    a = abs(float(v))
    r = math.floor(a) + (1 if a - math.floor(a) >= 0.5 else 0)
    return int(math.copysign(r, float(v))) if r else 0


def fp16(v: np.float32) -> np.float16:
    """GGML_FP32_TO_FP16: round to nearest even."""
    return np.float16(F(v))


def _f16_bytes(v: np.float16) -> list[int]:
    return list(np.array([v], dtype=np.float16).view(np.uint8))


# ----------------------------------------------------------------------------- Q8_0


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    out: list[int] = []
    for blk in np.asarray(x, dtype=F).reshape(-1, 32):
        amax = F(0)
        for v in blk:
            amax = max(amax, F(abs(v)))
        d = F(amax / F(127))
        inv = F(F(1) / d) if d else F(0)
        out += _f16_bytes(fp16(d))
        out += [roundf(F(v * inv)) & 0xFF for v in blk]
    return np.array(out, dtype=np.uint8)


def dequantize_q8_0(data: np.ndarray) -> np.ndarray:
    blocks = np.asarray(data, dtype=np.uint8).reshape(-1, 34)
    d = blocks[:, :2].copy().view(np.float16).astype(F)
    q = blocks[:, 2:].copy().view(np.int8).astype(F)
    return (q * d).reshape(-1)


# ----------------------------------------------------------------------------- Q5_0


def quantize_q5_0(x: np.ndarray) -> np.ndarray:
    out: list[int] = []
    for blk in np.asarray(x, dtype=F).reshape(-1, 32):
        amax, vmax = F(0), F(0)
        for v in blk:
            if amax < abs(v):
                amax, vmax = F(abs(v)), v
        d = F(vmax / F(-16))
        inv = F(F(1) / d) if d else F(0)
        q = [min(31, int(F(F(v * inv) + F(16.5)))) for v in blk]  # (int8_t) truncates
        qh = 0
        for j in range(16):
            qh |= ((q[j] & 0x10) >> 4) << j
            qh |= ((q[j + 16] & 0x10) >> 4) << (j + 16)
        out += _f16_bytes(fp16(d))
        out += list(qh.to_bytes(4, "little"))
        out += [(q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4) for j in range(16)]
    return np.array(out, dtype=np.uint8)


def dequantize_q5_0(data: np.ndarray) -> np.ndarray:
    blocks = np.asarray(data, dtype=np.uint8).reshape(-1, 22)
    d = blocks[:, :2].copy().view(np.float16).astype(F)
    qh = blocks[:, 2:6].copy().view(np.uint32)
    ql = blocks[:, 6:]
    lo = np.concatenate([ql & 0x0F, ql >> 4], axis=1).astype(np.int32)
    hi = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.int32)
    q = ((lo | (hi << 4)) - 16).astype(F)
    return (d * q).reshape(-1)


# ----------------------------------------------------------------------------- Q4_K


def make_qkx2_quants(x, weights, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Asymmetric scale+min search for one sub-block; returns (scale, the_min, L)."""
    n = len(x)
    mn, mx = x[0], x[0]
    sum_w = weights[0]
    sum_x = F(sum_w * x[0])
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        sum_w = F(sum_w + weights[i])
        sum_x = F(sum_x + F(weights[i] * x[i]))
    if mn > 0:
        mn = F(0)
    if mx == mn:
        return F(0), F(-mn), [0] * n
    iscale = F(F(nmax) / F(mx - mn))
    scale = F(F(1) / iscale)
    L = [max(0, min(nmax, nearest_int(F(iscale * F(x[i] - mn))))) for i in range(n)]
    best_error = F(0)
    for i in range(n):
        diff = F(F(F(scale * F(L[i])) + mn) - x[i])
        best_error = F(best_error + F(weights[i] * F(diff * diff)))
    for step in range(nstep + 1):
        iscale = F(F(F(F(rmin) + F(F(rdelta) * F(step))) + F(nmax)) / F(mx - mn))
        laux = [max(0, min(nmax, nearest_int(F(iscale * F(x[i] - mn))))) for i in range(n)]
        sum_l = sum_l2 = sum_xl = F(0)
        for i in range(n):
            wl = F(weights[i] * F(laux[i]))
            sum_l = F(sum_l + wl)
            sum_l2 = F(sum_l2 + F(wl * F(laux[i])))
            sum_xl = F(sum_xl + F(wl * x[i]))
        D = F(F(sum_w * sum_l2) - F(sum_l * sum_l))
        if D > 0:
            this_scale = F(F(F(sum_w * sum_xl) - F(sum_x * sum_l)) / D)
            this_min = F(F(F(sum_l2 * sum_x) - F(sum_l * sum_xl)) / D)
            if this_min > 0:
                this_min = F(0)
                this_scale = F(sum_xl / sum_l2)
            cur_error = F(0)
            for i in range(n):
                diff = F(F(F(this_scale * F(laux[i])) + this_min) - x[i])
                cur_error = F(cur_error + F(weights[i] * F(diff * diff)))
            if cur_error < best_error:
                L, best_error, scale, mn = laux, cur_error, this_scale, this_min
    return scale, F(-mn), L


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    out: list[int] = []
    for blk in np.asarray(x, dtype=F).reshape(-1, QK_K):
        L = [0] * QK_K
        scales, mins = [F(0)] * 8, [F(0)] * 8
        max_scale = max_min = F(0)
        for j in range(8):
            sub = blk[32 * j : 32 * j + 32]
            sum_x2 = F(0)
            for v in sub:
                sum_x2 = F(sum_x2 + F(v * v))
            av_x = F(np.sqrt(F(sum_x2 / F(32))))
            weights = [F(av_x + F(abs(v))) for v in sub]
            scales[j], mins[j], L[32 * j : 32 * j + 32] = make_qkx2_quants(sub, weights, 15, -1.0, 0.1, 20)
            if scales[j] > max_scale:
                max_scale = scales[j]
            if mins[j] > max_min:
                max_min = mins[j]
        inv_scale = F(F(63) / max_scale) if max_scale > 0 else F(0)
        inv_min = F(F(63) / max_min) if max_min > 0 else F(0)
        ls = [min(63, nearest_int(F(inv_scale * scales[j])) & 0xFF) for j in range(8)]  # uint8_t wraps
        lm = [min(63, nearest_int(F(inv_min * mins[j])) & 0xFF) for j in range(8)]
        packed = [0] * 12
        for j in range(8):
            if j < 4:
                packed[j] = ls[j]
                packed[j + 4] = lm[j]
            else:
                packed[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4)
                packed[j - 4] |= (ls[j] >> 4) << 6
                packed[j] |= (lm[j] >> 4) << 6
        d16, dmin16 = fp16(F(max_scale / F(63))), fp16(F(max_min / F(63)))
        for j in range(8):
            d = F(F(d16) * F(ls[j]))
            if not d:
                continue
            dm = F(F(dmin16) * F(lm[j]))
            for i in range(32 * j, 32 * j + 32):
                L[i] = max(0, min(15, nearest_int(F(F(blk[i] + dm) / d))))
        qs = [0] * 128
        for g in range(4):
            for i in range(32):
                qs[32 * g + i] = L[64 * g + i] | (L[64 * g + i + 32] << 4)
        out += _f16_bytes(d16) + _f16_bytes(dmin16) + packed + qs
    return np.array(out, dtype=np.uint8)


def _scale_min_k4(j: int, q: np.ndarray) -> tuple[int, int]:
    if j < 4:
        return int(q[j]) & 63, int(q[j + 4]) & 63
    return (int(q[j + 4]) & 0xF) | ((int(q[j - 4]) >> 6) << 4), (int(q[j + 4]) >> 4) | ((int(q[j]) >> 6) << 4)


def dequantize_q4_k(data: np.ndarray) -> np.ndarray:
    out: list[np.float32] = []
    for blk in np.asarray(data, dtype=np.uint8).reshape(-1, 144):
        d = F(blk[0:2].copy().view(np.float16)[0])
        dmin = F(blk[2:4].copy().view(np.float16)[0])
        sc, qs = blk[4:16], blk[16:]
        for g in range(4):
            s0, m0 = _scale_min_k4(2 * g, sc)
            s1, m1 = _scale_min_k4(2 * g + 1, sc)
            d1, dm1, d2, dm2 = F(d * F(s0)), F(dmin * F(m0)), F(d * F(s1)), F(dmin * F(m1))
            q = qs[32 * g : 32 * g + 32]
            out += [F(F(d1 * F(v & 0xF)) - dm1) for v in q]
            out += [F(F(d2 * F(v >> 4)) - dm2) for v in q]
    return np.array(out, dtype=F)


# ----------------------------------------------------------------------------- Q6_K


def make_qx_quants(x, nmax: int):
    """Symmetric scale search for one sub-block (rmse_type 1, weights x^2); returns (scale, L)."""
    n = len(x)
    mx = amax = F(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = F(abs(v)), v
    if amax < _EPS:
        return F(0), [0] * n
    iscale = F(F(-nmax) / mx)
    sumlx = suml2 = F(0)
    L = [0] * n
    for i in range(n):
        lv = max(-nmax, min(nmax - 1, nearest_int(F(iscale * x[i]))))
        L[i] = lv + nmax
        w = F(x[i] * x[i])
        sumlx = F(sumlx + F(F(w * x[i]) * F(lv)))
        suml2 = F(suml2 + F(F(w * F(lv)) * F(lv)))
    scale = F(sumlx / suml2) if suml2 else F(0)
    best = F(scale * sumlx)
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = F(F(-F(F(nmax) + F(F(0.1) * F(step)))) / mx)
        sumlx = suml2 = F(0)
        for i in range(n):
            lv = max(-nmax, min(nmax - 1, nearest_int(F(iscale * x[i]))))
            w = F(x[i] * x[i])
            sumlx = F(sumlx + F(F(w * x[i]) * F(lv)))
            suml2 = F(suml2 + F(F(w * F(lv)) * F(lv)))
        if suml2 > 0 and F(sumlx * sumlx) > F(best * suml2):
            L = [max(-nmax, min(nmax - 1, nearest_int(F(iscale * x[i])))) + nmax for i in range(n)]
            scale = F(sumlx / suml2)
            best = F(scale * sumlx)
    return scale, L


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    out: list[int] = []
    for blk in np.asarray(x, dtype=F).reshape(-1, QK_K):
        L = [0] * QK_K
        scales = [F(0)] * 16
        max_scale = max_abs_scale = F(0)
        for ib in range(16):
            scales[ib], L[16 * ib : 16 * ib + 16] = make_qx_quants(blk[16 * ib : 16 * ib + 16], 32)
            if abs(scales[ib]) > max_abs_scale:
                max_abs_scale, max_scale = F(abs(scales[ib])), scales[ib]
        if max_abs_scale < _EPS:
            out += [0] * 210
            continue
        iscale = F(F(-128) / max_scale)
        d16 = fp16(F(F(1) / iscale))
        sc = [min(127, nearest_int(F(iscale * scales[ib]))) for ib in range(16)]
        for j in range(16):
            d = F(F(d16) * F(sc[j]))
            if not d:
                continue
            for i in range(16 * j, 16 * j + 16):
                L[i] = max(-32, min(31, nearest_int(F(blk[i] / d)))) + 32
        ql, qh = [0] * 128, [0] * 64
        for h in range(2):
            b = 128 * h
            for i in range(32):
                q1, q2, q3, q4 = L[b + i], L[b + i + 32], L[b + i + 64], L[b + i + 96]
                ql[64 * h + i] = (q1 & 0xF) | ((q3 & 0xF) << 4)
                ql[64 * h + i + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4)
                qh[32 * h + i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
        out += ql + qh + [s & 0xFF for s in sc] + _f16_bytes(d16)
    return np.array(out, dtype=np.uint8)


def dequantize_q6_k(data: np.ndarray) -> np.ndarray:
    out = np.zeros((len(data) // 210, QK_K), dtype=F)
    for k, blk in enumerate(np.asarray(data, dtype=np.uint8).reshape(-1, 210)):
        ql, qh = blk[:128].astype(np.int32), blk[128:192].astype(np.int32)
        sc = blk[192:208].copy().view(np.int8)
        d = F(blk[208:210].copy().view(np.float16)[0])
        for h in range(2):
            for i in range(32):
                lo0, lo1, hi = ql[64 * h + i], ql[64 * h + i + 32], qh[32 * h + i]
                qv = [
                    (lo0 & 0xF) | (((hi >> 0) & 3) << 4),
                    (lo1 & 0xF) | (((hi >> 2) & 3) << 4),
                    (lo0 >> 4) | (((hi >> 4) & 3) << 4),
                    (lo1 >> 4) | (((hi >> 6) & 3) << 4),
                ]
                for r in range(4):
                    pos = 128 * h + 32 * r + i
                    out[k, pos] = F(F(d * F(sc[pos // 16])) * F(qv[r] - 32))
    return out.reshape(-1)


QUANTIZE = {"Q8_0": quantize_q8_0, "Q5_0": quantize_q5_0, "Q4_K": quantize_q4_k, "Q6_K": quantize_q6_k}
DEQUANTIZE = {"Q8_0": dequantize_q8_0, "Q5_0": dequantize_q5_0, "Q4_K": dequantize_q4_k, "Q6_K": dequantize_q6_k}
