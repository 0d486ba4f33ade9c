"""Counter-based randomness and exact top-k/top-p sampling for the slot sampler.

One uniform per (row key, step) makes a sample's text depend only on its seed and
sample index, never on the batch it lands in. Float32 logits sample by inverse CDF over
the sorted distribution; 16-bit logits (what the model emits) take ``pmat_kernels.nucleus``:
the same kept set with exact integer weights, no sort, a Triton kernel on CUDA.
"""

from __future__ import annotations

import hashlib

import torch

from pmat_kernels import nucleus

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def _signed(v: int) -> int:
    """A 64-bit pattern as the int64 torch stores."""
    v &= MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


def splitmix64(x: int) -> int:
    """SplitMix64 finaliser on Python ints (exact 64-bit)."""
    x = (x + GOLDEN) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def sample_key(seed: int, sample_index: int) -> int:
    """The random stream of one (request seed, sample index), as an int64 value."""
    return _signed(splitmix64(splitmix64(seed & MASK64) ^ sample_index))


def _lsr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def uniform_bits(keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One 24-bit integer uniform per row from (key, step): counter-based, batch-free."""
    x = keys + steps * _signed(GOLDEN)
    x = (x ^ _lsr(x, 30)) * _signed(0xBF58476D1CE4E5B9)
    x = (x ^ _lsr(x, 27)) * _signed(0x94D049BB133111EB)
    x = x ^ _lsr(x, 31)
    return _lsr(x, 40)


def uniforms(keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """``uniform_bits`` as float32 in [0, 1)."""
    return uniform_bits(keys, steps).to(torch.float32) * (1.0 / (1 << 24))


def _draw(cum: torch.Tensor, idx: torch.Tensor | None, u: torch.Tensor, top_p: torch.Tensor,
          k_eff: torch.Tensor, mass_k: torch.Tensor) -> torch.Tensor:
    """Token from descending-sorted cumulative probabilities ``cum`` after top-k, then top-p.

    The kept set is a prefix: the first ``k_eff`` entries cut to the shortest prefix holding
    ``top_p`` x ``mass_k`` (the top-k mass). The draw is the first entry whose cumulative
    probability exceeds ``u`` x (kept mass): never a zero-probability entry.
    """
    last = cum.shape[-1] - 1
    keep = torch.searchsorted(cum, (top_p * mass_k)[:, None].contiguous(), right=False) + 1
    keep = torch.minimum(keep, k_eff[:, None])
    total = cum.gather(1, (keep - 1).clamp(max=last))
    choice = torch.minimum(torch.searchsorted(cum, (u[:, None] * total).contiguous(), right=True), keep - 1)
    choice = choice.clamp(max=last)
    return (idx.gather(1, choice) if idx is not None else choice).squeeze(1)


def _sort_desc(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row sorted descending, with indices. On the CPU numpy's argsort is ~2x torch.sort."""
    if x.device.type != "cpu":
        return x.sort(dim=-1, descending=True)
    import numpy as np

    idx = torch.from_numpy(np.argsort(-x.numpy(), axis=-1))
    return x.gather(1, idx), idx


def sample_rows(
    logits: torch.Tensor,
    temp: torch.Tensor,
    top_p: torch.Tensor,
    top_k: torch.Tensor,
    keys: torch.Tensor,
    steps: torch.Tensor,
    filtered: bool,
    candidates: int = 0,
    greedy_rows: bool = True,
) -> tuple[torch.Tensor, bool]:
    """Next token per row: argmax where temp == 0, else temperature, top-k, top-p sampling.

    Semantics follow transformers' warpers: temperature, then top-k, then the smallest
    descending prefix holding >= top_p of the top-k mass. ``filtered`` False (no row
    uses top-k or top-p) samples the whole softmax without sorting. ``candidates`` > 0
    first tries the best ``candidates`` logits of each row (``topk`` instead of a full
    sort): exact when every row's kept prefix lies inside them, which is checked; else the
    full sort runs. ``greedy_rows`` False skips the argmax. 16-bit logits take the sort-free
    ``pmat_kernels.nucleus`` (the same kept set, ties by token index). Returns the tokens and whether
    it fell back from candidates to the full sort.
    """
    greedy = temp <= 0
    if logits.dtype in (torch.bfloat16, torch.float16):  # straight from the model: no sort at all
        c, k, tp = nucleus.prepare(torch.where(greedy, torch.ones_like(temp), temp), top_p, top_k, logits.shape[-1])
        token = nucleus.sample(logits, c, k, tp, uniform_bits(keys, steps))
        return (torch.where(greedy, logits.argmax(-1), token) if greedy_rows else token), False
    logits = logits.float()
    scaled = logits / (torch.where(greedy, torch.ones_like(temp), temp) if greedy_rows else temp)[:, None]
    u = uniforms(keys, steps)
    vocab = scaled.shape[-1]
    k_eff = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab)
    token, fell_back = None, False
    if not filtered:
        cum = torch.softmax(scaled, dim=-1).cumsum(-1)
        token = _draw(cum, None, u, torch.ones_like(top_p), torch.full_like(k_eff, vocab), cum[:, -1])
    elif 0 < candidates < vocab:
        vals, idx = scaled.topk(candidates, dim=-1)
        cum = torch.exp(vals - torch.logsumexp(scaled, -1, keepdim=True)).cumsum(-1)
        within = k_eff <= candidates
        mass_k = torch.where(within, cum.gather(1, (k_eff - 1).clamp(max=candidates - 1)[:, None])[:, 0],
                             torch.ones_like(top_p))
        inside = within | ((k_eff == vocab) & (cum[:, -1] >= top_p * mass_k))
        if bool((inside | greedy).all()):
            token = _draw(cum, idx, u, top_p, torch.where(within, k_eff, candidates), mass_k)
        fell_back = token is None
    if token is None:
        vals, idx = _sort_desc(scaled)
        cum = torch.softmax(vals, dim=-1).cumsum(-1)
        token = _draw(cum, idx, u, top_p, k_eff, cum.gather(1, (k_eff - 1)[:, None])[:, 0])
    return (torch.where(greedy, logits.argmax(-1), token) if greedy_rows else token), fell_back


def task_seed(seed: int, task_id: str) -> int:
    """The seed of one task's requests, from the run seed and the task id alone (never its batch
    or position); its samples then draw from (this seed, sample index)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{task_id}".encode()).digest()[:8], "big") >> 1
