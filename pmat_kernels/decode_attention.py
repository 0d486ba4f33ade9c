"""Single-query attention over a static KV cache with a length per row (the sampler's decode).

Why a kernel: the slot sampler attends one new token per row over ``rows x max_len`` cache
slots of which each row uses its own prefix. SDPA needs that as an additive mask over the
whole span and its memory-efficient kernel took 131 us per layer per step at 320 rows on an
H100, twice what reading the cache costs. Here one program per (row, kv head) reads only the
row's valid slots, once, for all the query heads that share that kv head (GQA), with an
online softmax in fp32.

The N samples of a prompt hold N equal copies of its prefix. Given ``shared`` (for each row:
the row holding the same prefix that its group reads, and that prefix's length), a row reads
its prefix slots from that row instead of its own: the group's programs run side by side, so
the prefix comes from HBM about once and from L2 after. The caller vouches that the slots are
equal (the engine passes a row's own index where its leader has since been refilled).

``reference_decode_attention`` is the plain torch computation the kernel is pinned to.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from pmat_kernels._backend import interpreted, require_triton, tl, triton


def reference_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor,
                               scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v over slots [0, lengths[b]) of each row, in fp32.

    q [B, H, D]; k, v [B, KV, S, D] with H a multiple of KV; lengths [B] >= 1. Returns [B, H, D]
    in q's dtype.
    """
    b, h, d = q.shape
    kv = k.shape[1]
    qg = q.float().view(b, kv, h // kv, d)
    w = torch.einsum("bkgd,bksd->bkgs", qg, k.float()) * scale
    slots = torch.arange(k.shape[2], device=q.device)
    w = w.masked_fill((slots[None, :] >= lengths[:, None])[:, None, None, :], float("-inf"))
    o = torch.einsum("bkgs,bksd->bkgd", torch.softmax(w, -1), v.float())
    return o.reshape(b, h, d).to(q.dtype)


def _decode_attention_kernel(q_ptr, k_ptr, v_ptr, len_ptr, src_ptr, plen_ptr, o_ptr, scale, sq_b, sq_h,
                             sk_b, sk_h, sk_s, so_b, so_h, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
                             BLOCK_S: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    kh = tl.program_id(1)
    n = tl.load(len_ptr + b)
    src = tl.load(src_ptr + b).to(tl.int64)  # the row to read slots [0, plen) from
    plen = tl.load(plen_ptr + b)
    g = tl.arange(0, GP)
    d = tl.arange(0, D)
    heads = kh * G + g
    qmask = g[:, None] < G
    q = tl.load(q_ptr + b * sq_b + heads[:, None] * sq_h + d[None, :], mask=qmask, other=0.0)
    m = tl.full([GP], float("-inf"), tl.float32)
    l_sum = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, D], tl.float32)
    for s0 in range(0, n, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        valid = s < n
        at = tl.where(s < plen, src, b) * sk_b + kh * sk_h + s * sk_s  # slot offsets
        k = tl.load(k_ptr + at[:, None] + d[None, :], mask=valid[:, None], other=0.0)
        w = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # fp32 caches: no TF32
        w = tl.where(valid[None, :], w, float("-inf"))
        m_new = tl.maximum(m, tl.max(w, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(w - m_new[:, None])
        l_sum = l_sum * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + at[:, None] + d[None, :], mask=valid[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m = m_new
    o = acc / l_sum[:, None]
    tl.store(o_ptr + b * so_b + heads[:, None] * so_h + d[None, :], o.to(o_ptr.dtype.element_ty), mask=qmask)


@functools.cache
def _kernel() -> Any:
    require_triton("decode attention")
    return triton.jit(_decode_attention_kernel)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor, scale: float,
                     shared: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The Triton path of ``reference_decode_attention`` (same shapes; k, v with unit stride in D).

    ``shared`` = (src, plen), [B] each: row b reads slots [0, plen[b]) from row src[b] (which must
    hold the same values there); None reads every row's own slots.
    """
    b, h, d = q.shape
    kv = k.shape[1]
    if h % kv or d & (d - 1) or k.stride(3) != 1 or v.stride() != k.stride() or q.stride(2) != 1:
        raise ValueError(f"decode attention: q {tuple(q.shape)}, cache {tuple(k.shape)} strides {k.stride()}: "
                         "needs heads a multiple of kv heads, a power-of-two head dim, unit stride in it")
    out = torch.empty(b, h, d, dtype=q.dtype, device=q.device)
    g = h // kv
    block = 16 if interpreted() else 64  # small tiles cross blocks in tests
    if shared is None:
        shared = torch.arange(b, device=q.device), torch.zeros_like(lengths)
    _kernel()[(b, kv)](q, k, v, lengths, shared[0], shared[1], out, scale, q.stride(0), q.stride(1),
                       k.stride(0), k.stride(1), k.stride(2), out.stride(0), out.stride(1), G=g,
                       GP=max(16, triton.next_power_of_2(g)), D=d, BLOCK_S=block, num_warps=4)
    return out
