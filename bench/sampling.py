"""N-sampling throughput: pmat's SlotEngine vs plain transformers ``generate``, same process.

    python bench/sampling.py                              # CPU, tiny Qwen2, vs a per-prompt generate loop
    python bench/sampling.py --device cuda --shape 7b     # Qwen2.5-Coder-7B shape, random bf16 weights

Both sides get the same model, the same prompts (random token ids of one length), the
same N, temperature/top-p and the same number of new tokens, forced (EOS ignored). Both
are warmed up with full runs before timing. CPU target: >= 3x a plain per-prompt loop
(``generate(num_return_sequences=N)`` once per prompt). GPU target: >= 2x plain batched
``generate`` over all prompts at once (the same batch of prompts x N rows).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    "tiny": dict(vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2),
    "7b": dict(vocab_size=152_064, hidden_size=3584, intermediate_size=18_944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, rope_theta=1_000_000.0),
}


def build_model(shape: str, device: str, dtype):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**SHAPES[shape], max_position_embeddings=32_768, tie_word_embeddings=False,
                      pad_token_id=0, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = Qwen2ForCausalLM(cfg)
        finally:
            torch.set_default_dtype(prev)
    model.generation_config = GenerationConfig(pad_token_id=0, eos_token_id=None, bos_token_id=None)
    return model.eval()


def profile(fn, gpu: bool) -> None:
    """The kernels of one run, by device time: where a step goes."""
    import torch
    from torch.profiler import ProfilerActivity

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with torch.profiler.profile(activities=acts) as prof:
        fn()
    key = "cuda_time_total" if gpu else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--shape", choices=sorted(SHAPES))
    ap.add_argument("--prompts", type=int)
    ap.add_argument("--n", type=int)
    ap.add_argument("--prompt-len", type=int)
    ap.add_argument("--new-tokens", type=int)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--warmup", type=int, help="full untimed runs of each side before timing")
    ap.add_argument("--reps", type=int, default=1, help="timed runs of each side (median)")
    ap.add_argument("--no-graphs", action="store_true", help="pmat side without CUDA graphs")
    ap.add_argument("--threads", type=int, help="torch CPU threads for both sides (default: torch's)")
    ap.add_argument("--profile", action="store_true", help="then profile one run of the fastest pmat variant")
    a = ap.parse_args(argv)

    import torch
    import transformers

    from engine.gen.engine import Seq, SlotEngine
    from engine.gen.sampling import sample_key

    if a.threads:
        torch.set_num_threads(a.threads)
    gpu = a.device == "cuda"
    shape = a.shape or ("7b" if gpu else "tiny")
    prompts, n = a.prompts or (32 if gpu else 16), a.n or (10 if gpu else 8)
    plen, new = a.prompt_len or (200 if gpu else 64), a.new_tokens or (256 if gpu else 64)
    warmup = a.warmup if a.warmup is not None else (2 if gpu else 1)
    dtype = torch.bfloat16 if gpu else torch.float32
    if gpu and not torch.cuda.is_available():
        raise SystemExit("bench/sampling: --device cuda but torch.cuda.is_available() is False")
    model = build_model(shape, a.device, dtype)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (prompts, plen), generator=g)
    print(f"config device={a.device} shape={shape} dtype={dtype} prompts={prompts} n={n} prompt_len={plen} "
          f"new_tokens={new} T={a.temperature} top_p={a.top_p} warmup={warmup} reps={a.reps} "
          f"threads={torch.get_num_threads()} torch={torch.__version__} transformers={transformers.__version__}"
          + (f" gpu={torch.cuda.get_device_name()}" if gpu else ""))
    total_tokens = prompts * n * new

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize()

    def timed(fn) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(a.reps):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def hf_generate(batch: torch.Tensor) -> torch.Tensor:
        dev_ids = batch.to(a.device)
        out = model.generate(input_ids=dev_ids, attention_mask=torch.ones_like(dev_ids), do_sample=True,
                             temperature=a.temperature, top_p=a.top_p, top_k=0, num_return_sequences=n,
                             max_new_tokens=new, min_new_tokens=new)
        assert out.shape == (batch.shape[0] * n, plen + new), out.shape
        return out

    engines: dict[tuple[bool, str, bool], SlotEngine] = {}

    def pmat(graphs: bool, attention: str = "sdpa", fused: bool = False) -> None:
        key = (graphs, attention, fused)
        if key not in engines:
            engines.clear()
            if gpu:
                torch.cuda.empty_cache()
            engines[key] = SlotEngine(model, prompts * n, plen + new, [], cuda_graphs=graphs,
                                      sync_every=8 if gpu else 1, ignore_eos=True, attention=attention,
                                      fused=fused, share_weights=fused)
        seqs = [Seq(p, j, ids[p].tolist(), new, a.temperature, a.top_p, 0, sample_key(p, j))
                for p in range(prompts) for j in range(n)]
        engines[key].run(seqs)
        assert all(len(s.tokens) == new for s in seqs)
        if graphs and engines[key].graph_error:
            raise RuntimeError(f"CUDA graphs fell back to eager: {engines[key].graph_error}")

    results: dict[str, float] = {}
    with torch.inference_mode():
        if gpu:
            results["plain batched generate"] = timed(lambda: hf_generate(ids))
        else:
            results["plain per-prompt generate loop"] = timed(lambda: [hf_generate(ids[i:i + 1]) for i in range(prompts)])
            results["plain batched generate"] = timed(lambda: hf_generate(ids))
        variants = [(False, "sdpa", False)]  # (CUDA graphs, decode attention, fused weights + RMSNorm)
        if gpu and not a.no_graphs:
            # unfused first: fused variants share the model's weights in place (as the backend does)
            variants = [(True, "sdpa", False), (True, "triton", False), (True, "sdpa", True), (True, "triton", True)]
        def variant_name(v: tuple[bool, str, bool]) -> str:
            graphs, attention, fused = v
            name = "pmat sampler" + (" (CUDA graphs" if graphs else " (eager" if gpu else "")
            return name + (("".join([f", {attention} attn" if attention != "sdpa" else "", ", fused" if fused else ""])
                            + ")") if gpu else "")

        for graphs, attention, fused in variants:
            name = variant_name((graphs, attention, fused))
            try:
                results[name] = timed(lambda v=(graphs, attention, fused): pmat(*v))
            except Exception as exc:  # noqa: BLE001 - report a failed variant, measure the others
                print(f"{name}: FAILED {type(exc).__name__}: {exc}")
        if gpu:
            print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        if a.profile:
            profile(lambda: pmat(*min((v for v in variants if variant_name(v) in results),
                                      key=lambda v: results[variant_name(v)])), gpu)
    for name, sec in results.items():
        print(f"{name:40s}: {sec:8.2f} s  {total_tokens / sec:10.0f} tok/s  {prompts / sec * 3600:10.0f} prompts/h")
    ours = {k: v for k, v in results.items() if k.startswith("pmat")}
    if not ours:
        print("BENCH sampling_ratio 0 - MISS")
        return 1
    best_name, best = min(ours.items(), key=lambda kv: kv[1])
    base_name = "plain batched generate" if gpu else "plain per-prompt generate loop"
    ratio = results[base_name] / best
    target = 2.0 if gpu else 3.0
    tag = f"sampling_{shape}_{a.device}"
    print(f"best pmat: {best_name}; ratio vs {base_name}: {ratio:.2f}")
    if not gpu:
        print(f"ratio vs plain batched generate (same batch): {results['plain batched generate'] / best:.2f}")
    print(f"BENCH {tag}_ratio {ratio:.2f} {target} {'PASS' if ratio >= target else 'MISS'}")
    print(f"BENCH {tag}_tok_per_s {total_tokens / best:.0f} {target * total_tokens / results[base_name]:.0f} "
          f"{'PASS' if ratio >= target else 'MISS'}")
    print(f"BENCH {tag}_prompts_per_hour {prompts / best * 3600:.0f} {target * prompts / results[base_name] * 3600:.0f} "
          f"{'PASS' if ratio >= target else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
