"""Checks that need a real GPU (run on the device box, not in CI).

1. The compiled Triton log-prob kernels equal the full-logits reference on CUDA,
   forward and backward (fp32, trainable and frozen head).
2. The `parity` stage on a tiny model: CPU fp32 against CUDA bf16; the ledger record
   names the devices that actually ran.
3. The `eval` stage on CUDA: its record names the device that ran it.
4. The compiled Triton nucleus sampler draws the same tokens as its torch reference at
   Qwen's vocabulary (bf16 and fp16, flat to peaked, ties, masked tokens, top-k and top-p);
   prints both paths' time for 320 rows.
5. The compiled decode-attention kernel equals its reference at the 7B shape (bf16, GQA
   28/4, random row lengths) and prints its time against masked SDPA.
6. The memory probe through NVML: the GPU's total and used memory, and this process's
   own allocation attributed to its pid (what the console's per-job GPU column reads).
7. QLoRA as the sft/dpo stages load it (NF4, double-quantized, bf16 compute through
   bitsandbytes): a LoRA on it trains (the loss falls over a few AdamW steps), and the
   `merge` stage puts the adapter onto the bf16 base on CUDA. SKIP without bitsandbytes.

    python scripts/gpu_checks.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch


def cuda_ms(fn, reps: int, rounds: int = 1) -> float:
    """Milliseconds per call of ``fn`` on the GPU after one warm-up call: best of ``rounds``."""
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / reps)
    return best


def check_logprob() -> bool:
    from pmat_kernels.logprob import reference_token_logprobs, token_logprobs

    torch.manual_seed(0)
    ok = True
    for weight_grad in (True, False):
        h = torch.randn(300, 64, device="cuda", dtype=torch.float32, requires_grad=True)
        w = torch.randn(5000, 64, device="cuda", dtype=torch.float32, requires_grad=weight_grad)
        t = torch.randint(0, 5000, (300,), device="cuda")
        fast = token_logprobs(h, w, t, chunk_size=64, backend="triton")
        g = torch.randn_like(fast)
        grads_fast = torch.autograd.grad((fast * g).sum(), [h, w] if weight_grad else [h])
        ref = reference_token_logprobs(h, w, t)
        grads_ref = torch.autograd.grad((ref * g).sum(), [h, w] if weight_grad else [h])
        err = max((fast - ref).abs().max().item(), *[(a - b).abs().max().item() for a, b in zip(grads_fast, grads_ref, strict=True)])
        print(f"logprob triton on cuda vs reference (weight_grad={weight_grad}): max abs err {err:.2e}")
        ok &= err < 1e-4
    return ok


def check_nucleus() -> bool:
    from pmat_kernels import nucleus as nu

    g = torch.Generator(device="cuda").manual_seed(0)
    ok = True
    for dtype in (torch.bfloat16, torch.float16):
        for scale in (0.02, 1.0, 3.0, 8.0):
            rows, vocab = 64, 152_064
            logits = torch.randn(rows, vocab, device="cuda", generator=g) * scale
            logits[: rows // 4] = (logits[: rows // 4] * 4).round() / 4  # many ties
            logits = logits.to(dtype)
            logits[rows // 4, : vocab // 2] = float("-inf")
            temp = torch.rand(rows, device="cuda", generator=g) + 0.3
            top_p = torch.rand(rows, device="cuda", generator=g) * 0.6 + 0.4
            top_p[::5] = 1.0
            top_k = torch.randint(0, 60, (rows,), device="cuda", generator=g)
            top_k[::2] = 0
            c, k, tp = nu.prepare(temp, top_p, top_k, vocab)
            r = torch.randint(0, 1 << 24, (rows,), device="cuda", generator=g)
            diff = int((nu.triton_sample(logits, c, k, tp, r) != nu.reference_sample(logits, c, k, tp, r)).sum())
            print(f"nucleus triton vs reference ({dtype}, scale {scale}): {diff}/{rows} rows differ")
            ok &= diff == 0
    logits = (torch.randn(320, 152_064, device="cuda", generator=g) * 2).to(torch.bfloat16)
    ones = torch.ones(320, device="cuda")
    c, k, tp = nu.prepare(ones * 0.8, ones * 0.95, ones.long() * 0, 152_064)
    r = torch.randint(0, 1 << 24, (320,), device="cuda", generator=g)
    for name, fn in (("reference", nu.reference_sample), ("triton", nu.triton_sample)):
        ms = cuda_ms(lambda f=fn: f(logits, c, k, tp, r), 10)
        print(f"nucleus {name}: {ms:.2f} ms for 320 x 152064 bf16 (T=0.8, top-p 0.95)")
    return ok


def check_decode_attention() -> bool:
    import torch.nn.functional as F

    from pmat_kernels.decode_attention import decode_attention, reference_decode_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    rows, heads, kv, d, slots = 320, 28, 4, 128, 512
    q = torch.randn(rows, heads, d, device="cuda", generator=g).bfloat16()
    k = torch.randn(rows, kv, slots, d, device="cuda", generator=g).bfloat16()
    v = torch.randn(rows, kv, slots, d, device="cuda", generator=g).bfloat16()
    lengths = torch.randint(200, 457, (rows,), device="cuda", generator=g)
    err = float((decode_attention(q, k, v, lengths, d ** -0.5).float()
                 - reference_decode_attention(q, k, v, lengths, d ** -0.5).float()).abs().max())
    span = int(lengths.max() + 63) // 64 * 64
    mask = torch.where(torch.arange(span, device="cuda")[None] < lengths[:, None], 0.0, float("-inf")).bfloat16()
    qg = q.view(rows, kv, heads // kv, d)

    def sdpa():
        return F.scaled_dot_product_attention(qg, k[:, :, :span], v[:, :, :span], attn_mask=mask[:, None, None],
                                              scale=d ** -0.5)

    for name, fn in (("triton", lambda: decode_attention(q, k, v, lengths, d ** -0.5)), ("sdpa masked", sdpa)):
        print(f"decode attention {name}: {cuda_ms(fn, 50) * 1000:.0f} us (320 rows, 28/4 heads, lengths 200-456)")
    # 32 prompts x 10 samples: a 200-slot prefix copied into each sample's row, read from the first
    plen = torch.full((rows,), 200, device="cuda")
    src = torch.arange(rows, device="cuda") // 10 * 10
    k[:, :, :200], v[:, :, :200] = k[src, :, :200], v[src, :, :200]
    own = decode_attention(q, k, v, lengths, d ** -0.5)
    same = torch.equal(decode_attention(q, k, v, lengths, d ** -0.5, shared=(src, plen)), own)
    for name, shared in (("own rows", None), ("shared prefix", (src, plen))):
        us = cuda_ms(lambda sh=shared: decode_attention(q, k, v, lengths, d ** -0.5, shared=sh), 50, rounds=3) * 1000
        print(f"decode attention triton, {name}: {us:.0f} us (32 prompts x 10 rows, prefix 200)")
    print(f"decode attention shared prefix == own rows: {same}")
    q32, k32, v32 = q.float()[:64], k.float()[:64], v.float()[:64]  # fp32: IEEE dots, no TF32
    err32 = float((decode_attention(q32, k32, v32, lengths[:64], d ** -0.5)
                   - reference_decode_attention(q32, k32, v32, lengths[:64], d ** -0.5)).abs().max())
    print(f"decode attention triton vs reference: max abs err {err:.2e} (bf16), {err32:.2e} (fp32)")
    return err < 2e-2 and err32 < 1e-5 and same


def check_memory_probe() -> bool:
    import os

    from engine.memory import snapshot

    block = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")  # 1 GiB held by this pid
    snap = snapshot()
    del block
    for g in snap.gpus:
        mine = g.per_process.get(os.getpid())
        print(f"memory probe: {g.name} unified={g.unified} total={g.total} used={g.used} "
              f"this pid={mine} ({len(g.per_process)} processes listed)")
    gpu = snap.gpus[0] if snap.gpus else None
    return (gpu is not None and (gpu.unified or (gpu.total or 0) > 0)
            and (gpu.per_process.get(os.getpid()) or 0) >= 1 << 30)


def check_qlora() -> bool | None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        print("qlora: bitsandbytes is not installed")
        return None
    from peft import get_peft_model

    from engine.models.tiny import TinyConfig, build_tiny_model, training_corpus
    from engine.sdk import train as _train
    from engine.sdk.run import run_inline
    from engine.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        base = build_tiny_model(Path(tmp) / "model", TinyConfig(hidden_size=128, intermediate_size=256))
        assert _train.use_qlora("cuda:0", "auto")
        model = _train.load_causal_lm(base, "cuda:0", qlora=True, gradient_checkpointing=True)
        nf4 = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
        model = get_peft_model(model, _train.lora_config(8, 16, 0.0, ["q_proj", "v_proj", "up_proj", "down_proj"]))
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(base)
        ids = tok(training_corpus()[:8], return_tensors="pt", padding="max_length", truncation=True,
                  max_length=64)["input_ids"].to("cuda:0")
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
        losses = []
        model.train()
        for _ in range(12):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss))
        model.save_pretrained(Path(tmp) / "adapter")
        ws = Workspace(Path(tmp) / "ws")
        merged = run_inline(ws, "merge", "merge", params={}, inputs={"model": base, "adapter": Path(tmp) / "adapter"},
                            outputs=["model"], device="cuda:0")
        print(f"qlora: {nf4} NF4 linear layers, loss {losses[0]:.3f} -> {losses[-1]:.3f} over 12 steps; "
              f"merge on cuda: {merged}")
        return nf4 > 0 and losses[-1] < 0.9 * losses[0] and merged == "ok"


def check_stages() -> bool:
    from engine.models.tiny import build_tiny_model
    from engine.sdk.run import run_inline
    from engine.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "model")
        ws = Workspace(Path(tmp) / "ws")
        par = run_inline(ws, "parity", "parity", {"device_a": "cpu", "dtype_a": "float32", "device_b": "cuda",
                                                  "dtype_b": "bfloat16", "min_cosine": 0.99, "max_abs_diff": 0.5},
                         {"model": model}, device="cuda")
        ev = run_inline(ws, "eval", "eval", {"benchmark": "humaneval", "strategy": "standard", "prompt_mode": "auto",
                                             "max_new_tokens": 32, "temperature": 0.0, "n": 1, "seed": 0, "ks": [1],
                                             "limit": 8}, {"model": model}, outputs=["results"], device="cuda")
        records = [json.loads(x) for x in ws.ledger_path.read_text().splitlines()]
        for r in records:
            print(f"{r['benchmark']}: device {r.get('device')} devices {r.get('devices')} metrics {r['metrics']}")
        return par == "ok" and ev == "ok" and all("cuda" in str(r.get("device")) for r in records)


def main() -> int:
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    results = {"logprob": check_logprob(), "nucleus": check_nucleus(), "decode_attention": check_decode_attention(),
               "memory_probe": check_memory_probe(), "qlora": check_qlora(),
               "stages": check_stages()}
    for name, ok in results.items():
        print(f"GPUCHECK {name} {'SKIP' if ok is None else 'PASS' if ok else 'FAIL'}")
    return 0 if all(ok is not False for ok in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
