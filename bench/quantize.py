"""Benchmark the GGML quantizers.

CPU (default): Q4_K throughput of the vectorized torch path against the reference port on
the same tensor, in one run, bytes checked identical.

    python bench/quantize.py [--rows 64 --cols 1024]

GPU: quantize a Qwen2.5-Coder-7B-shaped bf16 checkpoint (random weights, built from its
config and written to --out) end to end to a Q4_K_M GGUF with the Triton path; spot-checks
Triton == torch == reference bytes on rows of real-shaped tensors; with --f16 also writes
the F16 GGUF and prints the AC-009 size ratio. Needs no `gguf` package.

    python bench/quantize.py --device cuda --shape 7b --out /tmp/q7b --f16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pmat_kernels.quant import reference as R  # noqa: E402
from pmat_kernels.quant.formats import QType  # noqa: E402
from pmat_kernels.quant.vectorized import quantize  # noqa: E402

QWEN_7B = dict(hidden_size=3584, num_hidden_layers=28, intermediate_size=18944, vocab_size=152064,
               num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
               rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)


def bench_cpu(rows: int, cols: int) -> int:
    torch.manual_seed(0)
    w = (torch.randn(rows, cols) * 0.02).to(torch.bfloat16)
    x = w.float().numpy().reshape(-1)
    t0 = time.perf_counter()
    ref = R.quantize_q4_k(x)
    t_ref = time.perf_counter() - t0
    quantize(w[:1], QType.Q4_K)  # warm-up
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < 2.0:
        vec = quantize(w, QType.Q4_K)
        reps += 1
    t_vec = (time.perf_counter() - t0) / reps
    same = np.array_equal(ref, vec.numpy().reshape(-1))
    n = rows * cols
    print(f"Q4_K {rows}x{cols} ({n // 256} blocks), torch threads for the vectorized path: 1")
    print(f"reference port : {n / t_ref:12.0f} weights/s ({t_ref:.2f} s)")
    print(f"vectorized     : {n / t_vec:12.0f} weights/s ({t_vec * 1e3:.1f} ms, {reps} reps)")
    print(f"bytes identical: {same}")
    for qt in (QType.Q6_K, QType.Q8_0):
        t0 = time.perf_counter()
        quantize(w, qt)
        print(f"vectorized {qt.name:5s}: {n / (time.perf_counter() - t0):12.0f} weights/s")
    speedup = t_ref / t_vec
    print(f"BENCH q4k_vectorized_speedup {speedup:.1f} 50 {'PASS' if speedup >= 50 and same else 'MISS'}")
    return 0 if same else 1


def build_7b(out: Path, device: str) -> Path:
    """A random bf16 checkpoint with Qwen2.5-Coder-7B's shapes, config and a small tokenizer."""
    from transformers import Qwen2Config

    from engine.models.checkpoint_writer import ShardedWriter
    from engine.models.tiny import train_tokenizer

    model = out / "qwen7b-random"
    if (model / "model.safetensors.index.json").is_file():
        return model
    cfg = Qwen2Config(**QWEN_7B)
    h, kv, inter = cfg.hidden_size, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads), cfg.intermediate_size
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,), "lm_head.weight": (cfg.vocab_size, h)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                   p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
                   p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
                   p + "self_attn.o_proj.weight": (h, h), p + "mlp.gate_proj.weight": (inter, h),
                   p + "mlp.up_proj.weight": (inter, h), p + "mlp.down_proj.weight": (h, inter)}
    gen = torch.Generator(device=device).manual_seed(0)
    with ShardedWriter(model, 5 << 30) as writer:
        for name, shape in shapes.items():
            if name.endswith("norm.weight"):
                t = torch.ones(shape, dtype=torch.bfloat16)
            else:
                t = (torch.randn(shape, generator=gen, device=device) * 0.02).to(torch.bfloat16).cpu()
            writer.add(name, t)
    cfg.save_pretrained(model)
    tok = train_tokenizer(512)
    tok.save_pretrained(model)
    return model


def spot_check(model: Path, device: str, backend: str) -> bool:
    """``backend`` (Triton on the GPU) == torch == reference (CPU) on rows of real-shaped tensors."""
    from engine.models.checkpoint import open_checkpoint

    reader = open_checkpoint(model)
    ok = True
    for name, qt in (("model.layers.0.self_attn.q_proj.weight", QType.Q4_K),
                     ("model.layers.0.mlp.down_proj.weight", QType.Q6_K),
                     ("model.embed_tokens.weight", QType.Q4_K)):
        w = reader.get(name)[:4].to(device)
        tri = quantize(w, qt, backend=backend).cpu().numpy()
        tor = quantize(w, qt, backend="torch").cpu().numpy()
        ref = R.QUANTIZE[qt.name](w.float().cpu().numpy().reshape(-1))
        same = np.array_equal(tri.reshape(-1), ref) and np.array_equal(tor.reshape(-1), ref)
        print(f"spot check {name} {qt.name}: {backend} == torch == reference: {same}")
        ok &= same
    return ok


def kernel_throughput(model: Path, device: str, backend: str) -> None:
    """Q4_K / Q6_K weights/s of ``backend`` against the torch path on the same device and tensor."""
    from engine.models.checkpoint import open_checkpoint

    w = open_checkpoint(model).get("model.layers.0.mlp.down_proj.weight").to(device)
    for qt in (QType.Q4_K, QType.Q6_K):
        times = {}
        for b in dict.fromkeys((backend, "torch")):
            quantize(w[:8], qt, backend=b)  # compile / warm up
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            quantize(w, qt, backend=b)
            if device == "cuda":
                torch.cuda.synchronize()
            times[b] = time.perf_counter() - t0
            print(f"{qt.name} {b:6s} on {device}: {w.numel() / times[b] / 1e6:8.1f} M weights/s ({tuple(w.shape)})")
        print(f"{qt.name} {backend} vs torch on {device}: {times['torch'] / times[backend]:.1f}x")


def bench_gpu(out: Path, f16: bool, device: str = "cuda", backend: str = "triton") -> int:
    from engine.models.gguf_export import export_gguf

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = build_7b(out, device)
    print(f"built random 7B-shaped checkpoint in {time.perf_counter() - t0:.1f} s: {model}")
    ok = spot_check(model, device, backend)
    kernel_throughput(model, device, backend)
    t0 = time.perf_counter()
    stats = export_gguf(model, out / "model-Q4_K_M.gguf", "q4_k_m", backend=backend, device=device)
    secs = time.perf_counter() - t0  # export_gguf copies every tensor back to the host: synchronous
    q_bytes = (out / "model-Q4_K_M.gguf").stat().st_size
    numel = sum(s["numel"] for s in stats)
    kinds = {t: sum(1 for s in stats if s["type"] == t) for t in sorted({s["type"] for s in stats})}
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device: {name}, backend {backend}; {numel / 1e9:.2f} B weights; tensors by type: {kinds}")
    print(f"Q4_K_M GGUF: {q_bytes / 1e9:.2f} GB, {8 * q_bytes / numel:.2f} bits/weight, {secs:.1f} s "
          f"({numel / secs / 1e6:.0f} M weights/s incl. read, error stats, write)")
    print(f"BENCH q4k_m_7b_end_to_end_s {secs:.1f} 600 {'PASS' if secs <= 600 and ok else 'MISS'}")
    if f16:
        t0 = time.perf_counter()
        export_gguf(model, out / "model-F16.gguf", "f16", device=device)
        f_bytes = (out / "model-F16.gguf").stat().st_size
        ratio = q_bytes / f_bytes
        print(f"F16 GGUF: {f_bytes / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s")
        print(f"BENCH q4k_m_7b_size_ratio_vs_f16 {ratio:.3f} 0.5 {'PASS' if ratio < 0.5 else 'MISS'}")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shape", default="small", choices=["small", "7b"])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--cols", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=Path("/tmp/pmat-quant-bench"))
    ap.add_argument("--f16", action="store_true", help="also write the F16 GGUF and print the size ratio")
    args = ap.parse_args()
    if args.device == "cuda":
        if args.shape != "7b":
            ap.error("--device cuda runs the 7B-shaped end-to-end benchmark: pass --shape 7b")
        return bench_gpu(args.out, args.f16)
    return bench_cpu(args.rows, args.cols)


if __name__ == "__main__":
    raise SystemExit(main())
