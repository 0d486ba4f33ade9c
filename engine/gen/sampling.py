"""Counter-based randomness and exact top-k/top-p sampling for the slot sampler.

One uniform per (row key, step) makes a sample's text depend only on its seed and
sample index, never on the batch it lands in. Sampling is by inverse CDF over the
sorted distribution; 16-bit logits take a sort-free path (a per-row histogram over
the 2**16 possible values gives the same order as a stable descending sort).
"""

from __future__ import annotations

import hashlib

import torch

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


def uniforms(keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One float32 uniform in [0, 1) per row from (key, step): counter-based, batch-free."""
    x = keys + steps * _signed(GOLDEN)
    x = (x ^ _lsr(x, 30)) * _signed(0xBF58476D1CE4E5B9)
    x = (x ^ _lsr(x, 27)) * _signed(0x94D049BB133111EB)
    x = x ^ _lsr(x, 31)
    return _lsr(x, 40).to(torch.float32) * (1.0 / (1 << 24))


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


_BINS: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _bin_table(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every 16-bit pattern of ``dtype`` sorted by value, descending: (bin -> pattern + 2**15,
    its value as float32 with NaN/+inf as -inf, i.e. probability 0, and the pattern as int16)."""
    if (dtype, device) not in _BINS:
        raw = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16)
        vals = raw.view(dtype).float()
        vals = torch.where(vals.isnan() | (vals == float("inf")), float("-inf"), vals)
        vals, order = vals.sort(descending=True, stable=True)
        _BINS[dtype, device] = (order.to(device), vals.to(device), raw[order].to(device))
    return _BINS[dtype, device]


def _sample_16bit(logits: torch.Tensor, temp: torch.Tensor, top_p: torch.Tensor, k_eff: torch.Tensor,
                  u: torch.Tensor) -> torch.Tensor:
    """Top-k/top-p inverse-CDF draw over 16-bit logits without sorting the vocabulary.

    A 16-bit logit takes one of 2**16 values, so a per-row histogram over the value-sorted
    patterns is an exact sort (ties by token index, as a stable sort): the kept prefix and the
    drawn position are found on bin-level cumulative sums, then the token is the j-th index
    holding the drawn bin's value. Same semantics as ``_draw`` after a stable descending sort;
    no host syncs, a few passes over the vocabulary instead of a 152k-wide sort.
    """
    rows, vocab = logits.shape
    order, bval, braw = _bin_table(logits.dtype, logits.device)
    bits = logits.view(torch.int16)
    ones = torch.ones((), device=logits.device).expand(rows, vocab)
    hist = torch.zeros(rows, 1 << 16, device=logits.device).scatter_add_(1, bits.long() + (1 << 15), ones)
    cnt = hist[:, order]  # tokens per bin, value-descending (exact integers in float32)
    top = logits.amax(-1).float()
    # unnormalised probability of one token of each bin; 0 for empty bins (above the max it would overflow)
    prob = torch.where(cnt > 0, torch.exp((bval[None] - top[:, None]) / temp[:, None]), 0.0)
    cum, ccnt = (cnt * prob).cumsum(-1), cnt.cumsum(-1)
    last = order.numel() - 1

    def before(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # x summed over the bins before b
        return torch.where(b > 0, x.gather(1, (b - 1).clamp(min=0)), 0.0)

    def mass_of(pos: torch.Tensor) -> torch.Tensor:  # mass of the first ``pos`` tokens
        b = torch.searchsorted(ccnt, pos).clamp(max=last)
        return before(cum, b) + (pos - before(ccnt, b)) * prob.gather(1, b)

    k = k_eff.to(cum.dtype)[:, None]
    target = top_p[:, None] * mass_of(k)
    b = torch.searchsorted(cum, target).clamp(max=last)  # first bin reaching top_p of the top-k mass
    pb = prob.gather(1, b)
    inside = torch.where(pb > 0, torch.ceil((target - before(cum, b)) / pb) - 1, 0.0)
    keep = torch.minimum(before(ccnt, b) + inside.clamp(min=0).minimum(cnt.gather(1, b)) + 1, k)
    x = u[:, None] * mass_of(keep)
    c = torch.searchsorted(cum, x, right=True).clamp(max=last)  # the bin holding the draw
    pc = prob.gather(1, c)
    within = torch.where(pc > 0, torch.floor((x - before(cum, c)) / pc), 0.0)
    pos = torch.minimum(before(ccnt, c) + within.clamp(min=0).minimum(cnt.gather(1, c)), keep - 1)
    d = torch.searchsorted(ccnt, pos + 1).clamp(max=last)  # bin of the 0-based position ``pos``
    j = (pos - before(ccnt, d)).long()
    hits = (bits == braw[d]).cumsum(-1, dtype=torch.int32)
    return (hits <= j).sum(-1)


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
    ``_sample_16bit`` (the same semantics, ties by token index). Returns the tokens and whether
    it fell back from candidates to the full sort.
    """
    greedy = temp <= 0
    if logits.is_floating_point() and logits.element_size() == 2:  # bf16/fp16 straight from the model
        vocab = logits.shape[-1]
        k_eff = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab)
        token = _sample_16bit(logits, torch.where(greedy, torch.ones_like(temp), temp), top_p, k_eff,
                              uniforms(keys, steps))
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
