"""A slot-based sampler over a Hugging Face decoder (Qwen2/Llama layout).

Why not ``model.generate``: it prefills every one of the N samples of a prompt
separately, grows its KV cache by concatenation every step, sorts the vocabulary
through generic logits processors and leaves rows idle once they finish. Here:

* one prefill per prompt, its KV copied into the N rows that sample from it;
* a static KV cache of ``rows x max_len`` slots; each row writes at its own pointer,
  so a finished row is refilled with the next prompt while the others decode;
* on CUDA the decode step is captured as a CUDA graph per attention-length bucket, and its
  attention is ``pmat_kernels.decode_attention``: each row's valid slots only, the prompt's
  prefix read from the first row of its group while that row still holds it;
* q|k|v and gate|up weights concatenated (one wider GEMM each), in place when allowed;
* exact top-k/top-p sampling with one counter-based uniform per (row key, step), so a
  sample's text depends only on its seed and sample index, not on its batch; 16-bit
  logits go to ``pmat_kernels.nucleus`` (a Triton kernel on CUDA, no vocabulary sort).

The model's own modules (norms, projections, MLP, rotary embedding) do the math; only
the attention over the cache and its bookkeeping are written here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from engine.gen.sampling import sample_rows
from pmat_kernels._backend import pick_backend
from pmat_kernels.decode_attention import decode_attention

ATTENTION = ("sdpa", "bmm", "triton")


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
                 candidates: int = 256, attention: str = "auto", fused: bool = False,
                 share_weights: bool = False) -> None:
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
        # the N rows of a prompt hold equal copies of its prefix; the Triton attention reads them from
        # the group's first row while that row still holds them (its fill count unchanged)
        self.fills = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.lead = torch.arange(rows, device=self.device)
        self.lead_fills = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.plen = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.stop = torch.tensor(sorted(set(stop_ids)) or [-1], device=self.device)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.sync_every = max(1, sync_every)
        self.prefill_tokens = prefill_tokens
        self.ignore_eos = ignore_eos
        self.candidates = candidates  # top-p from the best N logits when the nucleus fits (checked)
        if attention not in ("auto", *ATTENTION):
            raise ValueError(f"SlotEngine: attention={attention!r}; expected auto or one of {ATTENTION}")
        # decode attention: SDPA (masked, efficient kernel), plain bmm + softmax, or the Triton kernel
        # that reads each row's valid slots only (pmat_kernels.decode_attention; auto on CUDA: 84 against
        # SDPA's 151 us a layer at 320 rows on an H100)
        if attention == "auto":
            pow2 = self.head_dim & (self.head_dim - 1) == 0
            attention = "triton" if pow2 and pick_backend("decode attention", "auto", self.device) == "triton" else "sdpa"
        self.attention = attention
        # concatenated q|k|v and gate|up weights (one wider GEMM each) and RMSNorm as one
        # fused kernel instead of the module's six. ``share_weights``: the model's projections become
        # views of the concatenated weights, so they cost no memory (a model whose tensors then share
        # storage must not be saved with safetensors: for a model loaded only to generate)
        if fused and not self.can_fuse(model):
            raise ValueError(f"{type(model).__name__}: fused=True needs plain nn.Linear projections "
                             "(q/k/v all with or all without bias) and a bias-free gated MLP")
        self.fused = [self._fuse(layer, share_weights) for layer in self.layers] if fused else None
        self.cooldown = 0  # steps to skip the candidate path after it fell back (flat distributions)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.graph_error: str | None = None
        self.pool = None

    # -- the model math ---------------------------------------------------------
    @staticmethod
    def can_fuse(model) -> bool:
        """Whether every layer has plain Linear projections (not LoRA-wrapped, not quantized), q/k/v
        all with or all without bias, and a bias-free gated MLP: what ``fused`` concatenates."""
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            names = ("gate_proj", "up_proj", "down_proj", "act_fn")
            if not all(hasattr(m, n) for n in names) or not hasattr(a, "q_proj"):
                return False
            projs = (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj)
            if any(type(p) is not torch.nn.Linear for p in projs) or m.gate_proj.bias is not None:
                return False
            if len({a.q_proj.bias is None, a.k_proj.bias is None, a.v_proj.bias is None}) > 1:
                return False
        return True

    @staticmethod
    def _fuse(layer, share: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        a, m = layer.self_attn, layer.mlp
        projs, mlp = (a.q_proj, a.k_proj, a.v_proj), (m.gate_proj, m.up_proj)
        bias = torch.cat([p.bias for p in projs]) if a.q_proj.bias is not None else None
        qkv, gate_up = torch.cat([p.weight for p in projs]), torch.cat([p.weight for p in mlp])
        if share:  # each module now reads its rows of the concatenation; its own copy is freed
            for mods, whole in ((projs, qkv), (mlp, gate_up)):
                start = 0
                for mod in mods:
                    rows = mod.weight.shape[0]
                    mod.weight.data = whole[start:start + rows]
                    start += rows
            if qkv.is_cuda:
                # hand this layer's freed copies back now: the next layer's wider concatenation cannot
                # reuse them, so left in the caching allocator they pile up to 41 GB at 32B (a peak
                # of weights + 64 %) before an empty_cache after the last layer would release them
                torch.cuda.empty_cache()
        return qkv, bias, gate_up

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
        if self.attention == "triton":  # a row's valid slots are [0, ptr]: its prompt, then its tokens
            lengths = self.ptr + 1
            shared = torch.where(self.fills[self.lead] == self.lead_fills, self.lead, self.arange), self.plen
        for i, layer in enumerate(self.layers):
            a, q, k, v = self._attend_layer(i, layer, x, cos, sin)
            self.k[i][self.arange, :, self.ptr] = k[:, :, 0]
            self.v[i][self.arange, :, self.ptr] = v[:, :, 0]
            if self.attention == "triton":
                o = decode_attention(q[:, :, 0], self.k[i], self.v[i], lengths, a.scaling, shared)
            else:
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
        if self.attention == "triton":  # the kernel reads each row's own length: one graph serves all spans
            span = self.max_len
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
        leaders = torch.tensor([rows[grp[0]] for grp in groups], device=self.device)[src]
        self.fills[dest] += 1
        self.lead[dest], self.lead_fills[dest], self.plen[dest] = leaders, self.fills[leaders], lens[src]
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
