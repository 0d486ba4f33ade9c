"""Per-token log-probabilities and cross-entropy without holding full-vocabulary logits.

Qwen2.5's 152,064-token vocabulary makes the logits of 4 x 1,024 tokens 1.2 GB in bf16
(2.5 GB once upcast), with as much again for their gradient; DPO doubles the tokens. Here
the logits only ever exist one slab at a time:

* forward: token chunks of ``chunk_size`` rows; each chunk's logits give the row's
  log-sum-exp and target logit (and optional no-grad stats), then are freed;
* backward: the logits are recomputed in vocabulary blocks of about the same size, so
  ``grad_weight[block] = dlogits_block.T @ hidden`` is one matmul over all tokens (rounded
  once, like the full computation) and ``grad_hidden`` accumulates in fp32;
* a frozen head (LoRA) with a hidden state that needs a gradient: the forward also stores
  ``d logp / d hidden = W[t] - softmax @ W`` per token (N x H, small), so the backward is a
  scale and no logits are recomputed.

Row work (log-sum-exp, softmax gradient written in place over the slab) has a plain torch
path and a Triton path; ``reference_*`` compute the full logits and define the numbers.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from pmat_kernels._backend import pick_backend, require_triton, tile, tl, triton

IGNORE_INDEX = -100


# --- reference: full logits ------------------------------------------------------------
def reference_token_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """log p(target) per token from the full (N, V) logits, upcast to fp32; 0 where ignored."""
    logits = (hidden.reshape(-1, hidden.shape[-1]) @ weight.T).float()
    t = targets.reshape(-1)
    lp = logits.log_softmax(-1).gather(-1, t.clamp(min=0)[:, None]).squeeze(-1)
    return lp.masked_fill(t == ignore_index, 0.0).view(targets.shape)


def reference_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Mean cross-entropy over non-ignored tokens, full logits."""
    lp = reference_token_logprobs(hidden, weight, targets, ignore_index)
    return -lp.sum() / (targets != ignore_index).sum().clamp(min=1)


# --- row work: torch -------------------------------------------------------------------
def _torch_rows_forward(logits: torch.Tensor, t: torch.Tensor, stats: bool) -> tuple[torch.Tensor, ...]:
    x = logits.float()
    lse = torch.logsumexp(x, -1)
    tgt = x.gather(-1, t[:, None]).squeeze(-1)
    if not stats:
        return lse, tgt
    p = torch.exp(x - lse[:, None])
    entropy = (p * (lse[:, None] - x)).sum(-1)
    return lse, tgt, entropy, x.mean(-1), tgt >= x.max(-1).values


def _torch_rows_grad_(logits: torch.Tensor, t_local: torch.Tensor, lse: torch.Tensor, g: torch.Tensor) -> None:
    """In place: logits <- g * (onehot(t_local) - softmax(logits)); t_local outside [0, width) has no one-hot."""
    # fp32 slabs are rewritten in place; lower precision goes through one fp32 copy
    d = logits if logits.dtype == torch.float32 else logits.float()
    d.sub_(lse[:, None]).exp_().mul_(-g[:, None])
    hit = (t_local >= 0) & (t_local < logits.shape[1])
    rows = torch.nonzero(hit).squeeze(-1)
    d[rows, t_local[rows]] += g[rows]
    if d is not logits:
        logits.copy_(d)


# --- row work: triton ------------------------------------------------------------------
# Plain functions, jitted on first use (``_kernels``): the interpreter is chosen when
# ``triton.jit`` runs, so tests can set TRITON_INTERPRET=1 after this module was imported.
def _rows_forward_kernel(x_ptr, stride, t_ptr, lse_ptr, tgt_ptr, ent_ptr, mean_ptr, top_ptr, V,
                         BLOCK: tl.constexpr, STATS: tl.constexpr):
    row = tl.program_id(0)
    base = x_ptr + row.to(tl.int64) * stride
    m = float("-inf")
    s = 0.0
    u = 0.0
    tot = 0.0
    for off in range(0, V, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = cols < V
        x = tl.load(base + cols, mask=mask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        scale = tl.exp(m - m_new)
        e = tl.exp(x - m_new)
        if STATS:
            # u = sum exp(x - m) * (x - m), rescaled as m grows: entropy = log s - u / s
            xs = tl.where(mask, x, 0.0)
            shift = tl.where(s > 0, m - m_new, 0.0) * s
            u = (u + shift) * scale + tl.sum(e * tl.where(mask, x - m_new, 0.0), 0)
            tot += tl.sum(xs, 0)
        s = s * scale + tl.sum(e, 0)
        m = m_new
    lse = m + tl.log(s)
    t = tl.load(t_ptr + row)
    tgt = tl.load(base + t).to(tl.float32)
    tl.store(lse_ptr + row, lse)
    tl.store(tgt_ptr + row, tgt)
    if STATS:
        tl.store(ent_ptr + row, tl.log(s) - u / s)
        tl.store(mean_ptr + row, tot / V)
        tl.store(top_ptr + row, (tgt >= m).to(tl.int8))


def _rows_grad_kernel(x_ptr, stride, t_ptr, lse_ptr, g_ptr, V, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = x_ptr + row.to(tl.int64) * stride
    t = tl.load(t_ptr + row)
    lse = tl.load(lse_ptr + row)
    g = tl.load(g_ptr + row)
    for off in range(0, V, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = cols < V
        x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(cols == t, g, 0.0) - g * tl.exp(x - lse)
        tl.store(base + cols, d.to(x_ptr.dtype.element_ty), mask=mask)


@functools.cache
def _kernels() -> tuple[Any, Any]:
    require_triton("logprob")
    return triton.jit(_rows_forward_kernel), triton.jit(_rows_grad_kernel)


def _block(width: int) -> int:
    """Vocabulary tile; small under the interpreter so its tests cross tile boundaries."""
    return tile(width, 4096, 64)


def _triton_rows_forward(logits: torch.Tensor, t: torch.Tensor, stats: bool) -> tuple[torch.Tensor, ...]:
    n, width = logits.shape
    f32 = dict(dtype=torch.float32, device=logits.device)
    lse, tgt = torch.empty(n, **f32), torch.empty(n, **f32)
    ent, mean = (torch.empty(n, **f32), torch.empty(n, **f32)) if stats else (lse, tgt)
    top = torch.empty(n, dtype=torch.int8, device=logits.device) if stats else lse
    _kernels()[0][(n,)](logits, logits.stride(0), t, lse, tgt, ent, mean, top, width,
                        BLOCK=_block(width), STATS=stats, num_warps=8)
    return (lse, tgt, ent, mean, top.bool()) if stats else (lse, tgt)


def _triton_rows_grad_(logits: torch.Tensor, t_local: torch.Tensor, lse: torch.Tensor, g: torch.Tensor) -> None:
    n, width = logits.shape
    _kernels()[1][(n,)](logits, logits.stride(0), t_local, lse, g.float().contiguous(), width,
                        BLOCK=_block(width), num_warps=8)


_ROWS = {"torch": (_torch_rows_forward, _torch_rows_grad_), "triton": (_triton_rows_forward, _triton_rows_grad_)}


# --- the autograd function -------------------------------------------------------------
class ChunkedLogProb(torch.autograd.Function):
    """log p(target) per row of ``hidden @ weight.T`` with O(chunk) logits memory (see module doc)."""

    # the backward's recomputed logits must see the forward's autocast state (bf16 training)
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                valid: torch.Tensor, chunk_size: int, backend: str, stats: bool, precompute: bool):
        rows_forward, rows_grad = _ROWS[backend]
        n = hidden.shape[0]
        out = [torch.empty(n, dtype=torch.float32, device=hidden.device) for _ in range(4)]
        top = torch.empty(n, dtype=torch.bool, device=hidden.device)
        dlp_dh = torch.empty_like(hidden) if precompute else None
        for a in range(0, n, chunk_size):
            b = min(n, a + chunk_size)
            logits = hidden[a:b] @ weight.T
            res = rows_forward(logits, targets[a:b], stats)
            out[0][a:b], out[1][a:b] = res[0], res[1]
            if stats:
                out[2][a:b], out[3][a:b], top[a:b] = res[2], res[3], res[4]
            if precompute:
                rows_grad(logits, targets[a:b], res[0], torch.ones(b - a, device=hidden.device))
                dlp_dh[a:b] = logits @ weight
            del logits
        lse, tgt = out[0], out[1]
        logp = torch.where(valid, tgt - lse, 0.0)
        ctx.chunk_size, ctx.backend, ctx.precompute = chunk_size, backend, precompute
        ctx.save_for_backward(hidden, weight, targets, valid, lse, dlp_dh)
        if not stats:
            return logp
        ctx.mark_non_differentiable(out[2], out[3], top)
        return logp, out[2].masked_fill(~valid, 0.0), out[3].masked_fill(~valid, 0.0), top & valid

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, grad_logp: torch.Tensor, *_: Any):
        hidden, weight, targets, valid, lse, dlp_dh = ctx.saved_tensors
        g = torch.where(valid, grad_logp.float(), 0.0)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if ctx.precompute:
            grad_h = (dlp_dh.float() * g[:, None]).to(hidden.dtype) if need_h else None
            return grad_h, None, None, None, None, None, None, None
        rows_grad = _ROWS[ctx.backend][1]
        n, vocab = hidden.shape[0], weight.shape[0]
        block = max(1, min(vocab, math.ceil(ctx.chunk_size * vocab / max(n, 1))))
        acc_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.empty_like(weight) if need_w else None
        for v0 in range(0, vocab, block):
            v1 = min(vocab, v0 + block)
            w = weight[v0:v1]
            dlogits = hidden @ w.T
            rows_grad(dlogits, targets - v0, lse, g)
            if need_h:
                acc_h += dlogits @ w
            if need_w:
                torch.mm(dlogits.T, hidden, out=grad_w[v0:v1])
            del dlogits
        grad_h = acc_h.to(hidden.dtype) if need_h else None
        return grad_h, grad_w, None, None, None, None, None, None


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int = 1024,
    ignore_index: int = IGNORE_INDEX,
    backend: str = "auto",
    stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """log p(target) per token (fp32, 0 where ignored), shape of ``targets``.

    ``hidden`` (..., H) and ``weight`` (V, H) (the lm_head weight, no bias). With ``stats``
    also returns no-grad entropy, mean logit and whether the target is the argmax.
    """
    if chunk_size < 1:
        raise ValueError(f"logprob chunk_size {chunk_size}: must be >= 1")
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"logprob: hidden size {hidden.shape[-1]} != lm_head in-features {weight.shape[-1]}")
    shape = targets.shape
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    if h.shape[0] != t.shape[0]:
        raise ValueError(f"logprob: {h.shape[0]} hidden rows but {t.shape[0]} targets")
    valid = t != ignore_index
    t = torch.where(valid, t, 0).long().contiguous()
    if bool(((t < 0) | (t >= weight.shape[0])).any()):
        raise ValueError(f"logprob: a target id is outside the vocabulary [0, {weight.shape[0]})")
    precompute = torch.is_grad_enabled() and h.requires_grad and not weight.requires_grad
    res = ChunkedLogProb.apply(h.contiguous(), weight, t, valid, chunk_size,
                               pick_backend("logprob", backend, h.device), stats, precompute)
    if not stats:
        return res.view(shape)
    return tuple(r.view(shape) for r in res)


def cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, chunk_size: int = 1024,
    ignore_index: int = IGNORE_INDEX, backend: str = "auto",
) -> torch.Tensor:
    """Mean cross-entropy over non-ignored tokens, chunked (see ``token_logprobs``)."""
    lp = token_logprobs(hidden, weight, targets, chunk_size=chunk_size, ignore_index=ignore_index, backend=backend)
    return -lp.sum() / (targets != ignore_index).sum().clamp(min=1)
