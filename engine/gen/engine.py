"""A slot-based sampler over a Hugging Face decoder (Qwen2/Llama layout).

Why not ``model.generate``: it prefills every one of the N samples of a prompt
separately, grows its KV cache by concatenation every step, sorts the vocabulary
through generic logits processors and leaves rows idle once they finish. Here:

* one prefill per prompt, its KV copied into the N rows that sample from it;
* a static KV cache of ``rows x max_len`` slots; each row writes at its own pointer,
  so a finished row is refilled with the next prompt while the others decode;
* on CUDA the decode step is captured as a CUDA graph per attention-length bucket;
* sampling by inverse CDF with one counter-based uniform per (row key, step), so a
  sample's text depends only on its seed and sample index, not on its batch.

The model's own modules (norms, projections, MLP, rotary embedding) do the math; only
the attention over the cache and its bookkeeping are written here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

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


@dataclass
class Seq:
    """One sample to produce: a prompt's token ids and its sampling settings."""

    req: int
    sample: int
    prompt_ids: list[int]
    max_new: int
    temperature: float
    top_p: float
    top_k: int
    key: int
    tokens: list[int] = field(default_factory=list)
    finish: str = ""


class SlotEngine:
    """Static-cache sampler for ``rows`` concurrent sequences of up to ``max_len`` tokens."""

    def __init__(self, model, rows: int, max_len: int, stop_ids: list[int], *, cuda_graphs: bool = False,
                 sync_every: int = 1, prefill_tokens: int = 16384, ignore_eos: bool = False,
                 candidates: int = 256, attention: str = "sdpa", fused: bool = False) -> None:
        cfg = model.config
        inner = model.model
        self.model, self.embed, self.layers = model, inner.embed_tokens, inner.layers
        self.norm, self.rotary, self.head = inner.norm, inner.rotary_emb, model.lm_head
        attn = self.layers[0].self_attn
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling"):
            if not hasattr(attn, name):
                raise ValueError(f"{type(model).__name__}: attention has no {name!r}; fast sampler needs a Qwen2/Llama layout")
        if any(getattr(layer.self_attn, "sliding_window", None) for layer in self.layers):
            raise ValueError(f"{type(model).__name__}: sliding-window attention is not supported by the fast sampler")
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, attn.head_dim
        self.rows = rows
        self.max_len = -(-max_len // 64) * 64
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        shape = (rows, self.n_kv, self.max_len, self.head_dim)
        self.k = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.layers]
        self.v = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.layers]
        self.mask = torch.full((rows, self.max_len), float("-inf"), device=self.device, dtype=self.dtype)
        # a device-side 0: assigning a Python scalar through an index copies it from the host,
        # which a CUDA graph capture refuses
        self.zero = torch.zeros((), device=self.device, dtype=self.dtype)
        self.arange = torch.arange(rows, device=self.device)
        self.tokens = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.ptr = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.stop = torch.tensor(sorted(set(stop_ids)) or [-1], device=self.device)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.sync_every = max(1, sync_every)
        self.prefill_tokens = prefill_tokens
        self.ignore_eos = ignore_eos
        self.candidates = candidates  # top-p from the best N logits when the nucleus fits (checked)
        if attention not in ("sdpa", "bmm"):
            raise ValueError(f"SlotEngine: attention={attention!r}; expected 'sdpa' or 'bmm'")
        self.attention = attention  # decode attention: SDPA (masked, efficient kernel) or plain bmm + softmax
        # opt-in: private concatenated q|k|v and gate|up weights (one wider GEMM each, more memory)
        # and RMSNorm as one fused kernel instead of the module's six
        self.fused = [self._fuse(layer) for layer in self.layers] if fused else None
        self.cooldown = 0  # steps to skip the candidate path after it fell back (flat distributions)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.graph_error: str | None = None
        self.pool = None

    # -- the model math ---------------------------------------------------------
    @staticmethod
    def _fuse(layer) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        a, m = layer.self_attn, layer.mlp
        if not all(hasattr(m, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")) or m.gate_proj.bias is not None:
            raise ValueError(f"{type(m).__name__}: fused=True needs a bias-free gated MLP (gate/up/down_proj)")
        projs = (a.q_proj, a.k_proj, a.v_proj)
        bias = torch.cat([p.bias for p in projs]) if all(p.bias is not None for p in projs) else None
        if bias is None and any(p.bias is not None for p in projs):
            raise ValueError(f"{type(a).__name__}: fused=True needs q/k/v all with or all without bias")
        return (torch.cat([p.weight for p in projs]), bias, torch.cat([m.gate_proj.weight, m.up_proj.weight]))

    def _norm(self, norm, x: torch.Tensor) -> torch.Tensor:
        """The model's RMSNorm (fp32 normalise, cast back, scale), via F.rms_norm when fused."""
        if self.fused is None or not hasattr(norm, "variance_epsilon"):
            return norm(x)
        return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=norm.variance_epsilon).to(x.dtype)

    def _mlp(self, i: int, layer, x: torch.Tensor) -> torch.Tensor:
        h = self._norm(layer.post_attention_layernorm, x)
        if self.fused is None:
            return layer.mlp(h)
        gate, up = F.linear(h, self.fused[i][2]).chunk(2, dim=-1)
        return layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)

    def _attend_layer(self, i: int, layer, x: torch.Tensor, cos, sin):
        """Projections + rotary of one layer for x [B, T, H] -> (q, k, v) as [B, heads, T, D]."""
        from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

        a = layer.self_attn
        b, t, _ = x.shape
        h = self._norm(layer.input_layernorm, x)
        nh, nk, d = self.n_heads, self.n_kv, self.head_dim
        if self.fused is None:
            q = a.q_proj(h).view(b, t, nh, d).transpose(1, 2)
            k = a.k_proj(h).view(b, t, nk, d).transpose(1, 2)
            v = a.v_proj(h).view(b, t, nk, d).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            return a, q, k, v
        # one GEMM for q|k|v, and the rotary (the same math as apply_rotary_pos_emb) over q|k at once
        qkv = F.linear(h, self.fused[i][0], self.fused[i][1])
        qk = qkv[..., : (nh + nk) * d].view(b, t, nh + nk, d)
        turned = torch.cat((-qk[..., d // 2:], qk[..., : d // 2]), dim=-1)
        qk = qk * cos.unsqueeze(2) + turned * sin.unsqueeze(2)
        v = qkv[..., (nh + nk) * d:].view(b, t, nk, d).transpose(1, 2)
        q, k = qk[:, :, :nh].transpose(1, 2), qk[:, :, nh:].transpose(1, 2)
        return a, q, k, v

    def _decode(self, span: int) -> torch.Tensor:
        """One token per row at its pointer; attention over slots [0, span). No host syncs."""
        if self.device.type != "cuda":
            return self._decode_layers(span)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # A masked single-query attention: memory-efficient kernel (math as fallback), not cuDNN.
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            return self._decode_layers(span)

    def _decode_layers(self, span: int) -> torch.Tensor:
        b, g = self.rows, self.n_heads // self.n_kv
        self.mask[self.arange, self.ptr] = self.zero
        x = self.embed(self.tokens[:, None])
        cos, sin = self.rotary(x, self.ptr[:, None])
        mask = self.mask[:, None, None, :span]
        for i, layer in enumerate(self.layers):
            a, q, k, v = self._attend_layer(i, layer, x, cos, sin)
            self.k[i][self.arange, :, self.ptr] = k[:, :, 0]
            self.v[i][self.arange, :, self.ptr] = v[:, :, 0]
            q = q.reshape(b, self.n_kv, g, self.head_dim)  # query heads grouped by their kv head
            kc, vc = self.k[i][:, :, :span], self.v[i][:, :, :span]
            if self.attention == "bmm":  # two batched GEMMs: one query per row reads the cache once each
                w = torch.matmul(q, kc.transpose(-1, -2)).float() * a.scaling + mask
                o = torch.matmul(torch.softmax(w, -1).to(q.dtype), vc)
            else:
                o = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, scale=a.scaling)
            x = x + a.o_proj(o.reshape(b, 1, self.n_heads * self.head_dim))
            x = x + self._mlp(i, layer, x)
        return self.head(self.norm(x)[:, 0])  # 16-bit logits sample without a vocabulary sort

    def _capture(self, span: int) -> None:
        """Record the decode step for ``span`` as a CUDA graph (warm-up first, on a side stream).

        Warm-up and capture repeat the same step (same tokens, same slots): idempotent.
        """
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._decode(span)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            out = self._decode(span)
        self.graphs[span] = (graph, out)

    def _step_logits(self, span: int) -> torch.Tensor:
        if self.cuda_graphs and span not in self.graphs:
            try:
                self._capture(span)
            except RuntimeError as exc:  # keep sampling, eagerly, and say why
                self.cuda_graphs, self.graph_error = False, f"{type(exc).__name__}: {exc}"
                self.graphs.clear()
                warnings.warn(f"CUDA graph capture failed, decoding eagerly: {self.graph_error}", stacklevel=2)
        if not self.cuda_graphs:
            return self._decode(span)
        graph, out = self.graphs[span]
        graph.replay()
        return out

    def _prefill(self, seqs: list[Seq], rows: list[int], groups: list[list[int]]) -> torch.Tensor:
        """Prefill each distinct prompt once (right-padded); copy its KV into its samples' rows.

        ``groups[j]`` lists the positions in ``rows`` that sample from prompt ``j``;
        returns the last-position logits per row [len(rows), V].
        """
        prompts = [seqs[grp[0]].prompt_ids for grp in groups]
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        t = max(len(p) for p in prompts)
        ids = torch.tensor([p + [0] * (t - len(p)) for p in prompts], device=self.device)
        src = torch.tensor([j for j, grp in enumerate(groups) for _ in grp], device=self.device)
        dest = torch.tensor([rows[r] for grp in groups for r in grp], device=self.device)
        x = self.embed(ids)
        cos, sin = self.rotary(x, torch.arange(t, device=self.device)[None].expand(len(prompts), t))
        g = self.n_heads // self.n_kv
        for i, layer in enumerate(self.layers):
            a, q, k, v = self._attend_layer(i, layer, x, cos, sin)
            self.k[i][dest, :, :t] = k[src]
            self.v[i][dest, :, :t] = v[src]
            o = F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                               is_causal=True, scale=a.scaling)
            x = x + a.o_proj(o.transpose(1, 2).reshape(len(prompts), t, -1))
            x = x + self._mlp(i, layer, x)
        last = self.norm(x[torch.arange(len(prompts), device=self.device), lens - 1])
        logits = self.head(last)
        slot = torch.arange(self.max_len, device=self.device)[None]
        self.mask[dest] = torch.where(slot < lens[src][:, None], 0.0, float("-inf")).to(self.dtype)
        self.ptr[dest] = lens[src]
        return logits[src]

    # -- the loop ---------------------------------------------------------------
    def run(self, seqs: list[Seq]) -> None:
        """Generate every sequence (fills ``seq.tokens`` and ``seq.finish``)."""
        if not seqs:
            return
        worst = max(len(s.prompt_ids) + s.max_new for s in seqs)
        if worst > self.max_len:
            raise ValueError(f"a prompt plus max_new_tokens needs {worst} slots; the engine has {self.max_len}")
        dev, rows = self.device, self.rows
        width = max(s.max_new for s in seqs) + 1  # last column: scratch for finished rows
        out = torch.zeros(rows, width, dtype=torch.long, device=dev)
        count = torch.zeros(rows, dtype=torch.long, device=dev)
        finished = torch.ones(rows, dtype=torch.bool, device=dev)
        keys = torch.zeros(rows, dtype=torch.long, device=dev)
        temp = torch.ones(rows, device=dev)  # idle rows sample (and are ignored), never divide by 0
        top_p = torch.ones(rows, device=dev)
        top_k = torch.zeros(rows, dtype=torch.long, device=dev)
        max_new = torch.ones(rows, dtype=torch.long, device=dev)
        filtered = any(s.temperature > 0 and (s.top_k > 0 or s.top_p < 1) for s in seqs)
        greedy_rows = any(s.temperature <= 0 for s in seqs)
        all_greedy = all(s.temperature <= 0 for s in seqs)

        def draw(logits: torch.Tensor, d: torch.Tensor | None, steps_of: torch.Tensor, candidates: int):
            if all_greedy:  # evaluation: no sampling work at all
                return logits.argmax(-1), False
            sel = (lambda t: t[d]) if d is not None else (lambda t: t)
            return sample_rows(logits, sel(temp), sel(top_p), sel(top_k), sel(keys), steps_of, filtered, candidates,
                               greedy_rows)

        # Groups of samples sharing a prompt, shortest prompts first (less padding per prefill).
        by_req: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            by_req.setdefault(s.req, []).append(i)
        pending = sorted(by_req.values(), key=lambda grp: (len(seqs[grp[0]].prompt_ids), seqs[grp[0]].req))
        owner: list[int | None] = [None] * rows
        base = [0] * rows  # host-side bound of a row's pointer: min(base + steps, cap)
        cap = [0] * rows
        stop_ids = set(self.stop.tolist())

        def is_stop(tok: torch.Tensor) -> torch.Tensor:
            if self.ignore_eos:
                return torch.zeros_like(tok, dtype=torch.bool)
            return torch.isin(tok, self.stop)

        def admit() -> None:
            free = [r for r in range(rows) if owner[r] is None]
            while pending and free:
                batch, used, longest = [], 0, 0
                while pending and used < len(free):
                    grp = pending[0]
                    plen = len(seqs[grp[0]].prompt_ids)
                    if batch and (len(batch) + 1) * max(longest, plen) > self.prefill_tokens:
                        break
                    take = grp[: len(free) - used]  # a group larger than the free rows is split
                    pending[0] = grp[len(take):]
                    if not pending[0]:
                        pending.pop(0)
                    batch.append(take)
                    used += len(take)
                    longest = max(longest, plen)
                sel = [i for grp in batch for i in grp]
                dest = free[: len(sel)]
                free = free[len(sel):]
                pos = {i: j for j, i in enumerate(sel)}
                logits = self._prefill([seqs[i] for i in sel], dest, [[pos[i] for i in grp] for grp in batch])
                d = torch.tensor(dest, device=dev)
                for r, i in zip(dest, sel, strict=True):
                    owner[r] = i
                    base[r] = len(seqs[i].prompt_ids) - steps
                    cap[r] = len(seqs[i].prompt_ids) + seqs[i].max_new - 1
                s_sel = [seqs[i] for i in sel]
                keys[d] = torch.tensor([s.key for s in s_sel], device=dev)
                temp[d] = torch.tensor([s.temperature for s in s_sel], device=dev)
                top_p[d] = torch.tensor([s.top_p for s in s_sel], device=dev)
                top_k[d] = torch.tensor([s.top_k for s in s_sel], device=dev)
                max_new[d] = torch.tensor([s.max_new for s in s_sel], device=dev)
                first, _ = draw(logits, d, torch.zeros_like(d), self.candidates)
                out[d] = 0
                out[d, 0] = first
                count[d] = 1
                finished[d] = is_stop(first) | (max_new[d] <= 1)
                self.tokens[d] = first

        def harvest() -> None:
            fin = finished.tolist()
            done = [r for r in range(rows) if owner[r] is not None and fin[r]]
            if not done:
                return
            d = torch.tensor(done, device=dev)
            counts, toks = count[d].tolist(), out[d].tolist()
            for r, c, row in zip(done, counts, toks, strict=True):
                s = seqs[owner[r]]
                s.tokens = row[:c]
                s.finish = "stop" if not self.ignore_eos and s.tokens[-1] in stop_ids else "length"
                owner[r] = None
                base[r] = cap[r] = 0

        steps = 0
        admit()
        while any(o is not None for o in owner):
            reach = max(min(b + steps, c) for b, c in zip(base, cap, strict=True))
            span = min(self.max_len, -(-(reach + 1) // 64) * 64)
            logits = self._step_logits(span)
            new, fell_back = draw(logits, None, count, self.candidates if self.cooldown == 0 else 0)
            self.cooldown = 16 if fell_back else max(0, self.cooldown - 1)
            active = ~finished
            out[self.arange, torch.where(active, count, width - 1)] = new
            count += active
            finished |= active & (is_stop(new) | (count >= max_new))
            self.tokens.copy_(torch.where(active, new, self.tokens))
            self.ptr += active
            steps += 1
            if steps % self.sync_every == 0:
                harvest()
                if pending:
                    admit()
