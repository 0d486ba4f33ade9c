"""Generation backend: greedy parity with transformers, per-sample determinism, stops, sampling law."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from engine.gen.backends import load_backend
from engine.gen.base import Backend, GenRequest
from engine.gen.hf import HFBackend
from engine.gen.sampling import sample_key, sample_rows, uniforms


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One BLAS thread: a loaded 2-core box makes OpenMP barriers, not math, the cost."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> HFBackend:
    return load_backend(tiny_model_dir, device="cpu")


def chat(be: HFBackend, text: str) -> str:
    return be.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                            add_generation_prompt=True)


def test_interface_and_device(backend: HFBackend) -> None:
    assert isinstance(backend, Backend)
    assert backend.device == "cpu" and backend.name == "transformers"
    eos = backend.tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    assert set(eos) <= set(backend.stop_ids)
    with pytest.raises(ValueError, match="unknown generation backend"):
        load_backend("x", backend="nope")
    with pytest.raises(ValueError, match="top_p"):
        GenRequest("r", "p", 4, top_p=0.0)
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="vllm is not installed"):
            load_backend(backend.model.name_or_path, backend="vllm")


def test_greedy_matches_transformers_generate(backend: HFBackend) -> None:
    prompts = [chat(backend, "Write a function add(a, b)."), chat(backend, "Reverse a string, in python, please.")]
    outs = backend.generate([GenRequest(f"r{i}", p, 24) for i, p in enumerate(prompts)])
    for p, o in zip(prompts, outs, strict=True):
        ids = backend.tokenizer(p, add_special_tokens=False, return_tensors="pt")
        ref = backend.model.generate(**ids, max_new_tokens=24, do_sample=False)[0, ids["input_ids"].shape[1]:]
        ref = ref.tolist()
        if ref[-1] in backend.stop_ids:
            ref = ref[:-1]
        assert o.texts == [backend.tokenizer.decode(ref, skip_special_tokens=True)]
        assert o.token_counts[0] <= 24 and o.finish_reasons[0] in ("stop", "length")


def test_samples_do_not_depend_on_their_batch(backend: HFBackend) -> None:
    a = GenRequest("a", chat(backend, "Sum a list."), 20, temperature=0.8, top_p=0.95, seed=7, n=4)
    b = GenRequest("b", chat(backend, "Is a number prime? Write is_prime(n)."), 20, temperature=1.0, top_k=20, seed=3, n=3)
    alone = backend.generate([a])[0]
    mixed = backend.generate([b, a])
    assert mixed[1].texts == alone.texts
    assert len(set(alone.texts)) > 1  # distinct samples, not one repeated
    small = HFBackend(Path(), model=backend.model, tokenizer=backend.tokenizer, max_rows=3)  # refills rows
    refilled = small.generate([b, a])
    assert refilled[1].texts == alone.texts and refilled[0].texts == mixed[0].texts
    c = GenRequest("a", a.prompt, 20, temperature=0.8, top_p=0.95, seed=8, n=4)
    assert backend.generate([c])[0].texts != alone.texts


def test_stop_token_ends_a_sample(tiny_model_dir: Path) -> None:
    be = load_backend(tiny_model_dir, device="cpu")
    with torch.no_grad():
        be.model.model.norm.weight.zero_()  # all logits equal: argmax is id 0, <|endoftext|>
    assert be.tokenizer.convert_ids_to_tokens(0) == "<|endoftext|>"
    prompt = chat(be, "hello")
    out = be.generate([GenRequest("s", prompt, 16)])[0]
    assert out.finish_reasons == ["stop"] and out.texts == [""] and out.token_counts == [1]
    forced = HFBackend(Path(), model=be.model, tokenizer=be.tokenizer, ignore_eos=True).generate(
        [GenRequest("s", prompt, 16)])[0]
    assert forced.finish_reasons == ["length"] and forced.token_counts == [16]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sampling_follows_the_distribution(dtype: torch.dtype) -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -8.0]], dtype=dtype).repeat(4000, 1)
    n = logits.shape[0]
    keys = torch.tensor([sample_key(11, i) for i in range(n)])
    steps = torch.zeros(n, dtype=torch.long)
    ones, zeros = torch.ones(n), torch.zeros(n, dtype=torch.long)

    def draw(temp=ones, top_p=ones, top_k=zeros, filtered=True, candidates=0) -> torch.Tensor:
        return sample_rows(logits, temp, top_p, top_k, keys, steps, filtered, candidates)[0]

    freq = torch.bincount(draw(filtered=False), minlength=5).float() / n
    assert torch.allclose(freq, torch.softmax(logits[0].float(), -1), atol=0.03)
    assert set(draw(top_p=ones * 0.7).tolist()) == {0, 1}  # p(0)=0.64 < 0.7 <= p(0)+p(1)=0.88
    assert set(draw(top_k=zeros + 1).tolist()) == {0}
    assert set(draw(temp=ones * 0, filtered=False).tolist()) == {0}
    # top-p is taken over the top-k survivors, renormalised (transformers' order): 0.73 >= 0.7
    assert set(draw(top_p=ones * 0.7, top_k=zeros + 2).tolist()) == {0}
    u = uniforms(keys, steps)
    assert 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.02


def test_candidate_path_is_exact_and_falls_back() -> None:
    g = torch.Generator().manual_seed(0)
    peaked = torch.randn(64, 1000, generator=g) * 3  # top-64 mass 0.90 to 0.9996 at T=0.8
    flat = torch.randn(64, 1000, generator=g) * 0.01
    keys = torch.tensor([sample_key(3, i) for i in range(64)])
    steps = torch.full((64,), 5)
    ones, zeros = torch.ones(64), torch.zeros(64, dtype=torch.long)
    for top_k in (zeros, zeros + 20):
        full, _ = sample_rows(peaked, ones * 0.8, ones * 0.85, top_k, keys, steps, True, 0)
        fast, fell = sample_rows(peaked, ones * 0.8, ones * 0.85, top_k, keys, steps, True, 64)
        assert not fell and torch.equal(full, fast)
    full, _ = sample_rows(flat, ones, ones * 0.9, zeros, keys, steps, True, 0)
    fast, fell = sample_rows(flat, ones, ones * 0.9, zeros, keys, steps, True, 64)
    assert fell and torch.equal(full, fast)  # the nucleus is ~900 tokens: sorted in full


def test_memory_estimate(tmp_path: Path, tiny_model_dir: Path) -> None:
    import json

    from engine.gen.memory import OVERHEAD, kv_bytes_per_token, param_count, sampling_bytes
    from engine.stages import sample

    cfg = dict(vocab_size=152_064, hidden_size=3584, intermediate_size=18_944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert param_count(cfg) == 7_615_616_512  # Qwen2.5-7B
    assert kv_bytes_per_token(cfg, 2) == 56 * 1024  # Qwen2.5-Coder-7B: 28 layers x 4 KV heads x 128 dims x 2 (K, V) x 2 bytes = 56 KiB/token
    got = sampling_bytes(tmp_path, rows=320, max_len=512, dtype="bfloat16")
    assert got == 2 * 7_615_616_512 + 320 * 512 * 56 * 1024 + 320 * 152_064 * 16 + OVERHEAD
    with pytest.raises(ValueError, match="nowhere/config.json"):
        sampling_bytes(tmp_path / "nowhere", 1, 1)
    params = sample.Params(n=10, temperature=0.8, top_p=0.95, top_k=0, max_new_tokens=512, seed=0,
                           strategy="asserts", data_path="x", max_rows=64)
    assert sample.memory_estimate(params, {"model": tiny_model_dir}) > OVERHEAD


def test_bmm_attention_and_fused_weights_match(backend: HFBackend) -> None:
    """Decode attention as two GEMMs + softmax or the Triton kernel, and fused q|k|v, gate|up weights
    (a private copy, or shared in place with the model's projections): the same samples."""
    import copy

    from peft import LoraConfig, get_peft_model

    from engine.gen.engine import Seq, SlotEngine

    ids = backend.tokenizer(chat(backend, "Sort a list."), add_special_tokens=False)["input_ids"]
    own = copy.deepcopy(backend.model)
    runs = []
    for model, attention, fuse, share in ((own, "sdpa", False, False), (own, "bmm", False, False),
                                          (own, "triton", False, False), (own, "bmm", True, False),
                                          (own, "sdpa", True, True)):
        eng = SlotEngine(model, 3, len(ids) + 20, backend.stop_ids, sync_every=4, attention=attention,
                         fused=fuse, share_weights=share)
        seqs = [Seq(0, j, ids, 20, 0.0 if j == 0 else 1.0, 0.9, 0, sample_key(5, j)) for j in range(5)]
        with torch.inference_mode():
            eng.run(seqs)
        runs.append([(s.tokens, s.finish) for s in seqs])
    assert runs[0] == runs[1] == runs[2] == runs[3] == runs[4]
    # shared: the model's own projections are views of the engine's concatenations
    layer, (qkv, _, gate_up) = own.model.layers[1], eng.fused[1]
    assert layer.self_attn.k_proj.weight.data_ptr() == qkv[layer.self_attn.q_proj.weight.shape[0]:].data_ptr()
    assert layer.mlp.gate_proj.weight.data_ptr() == gate_up.data_ptr()
    # LoRA-wrapped projections cannot be concatenated: refused, not silently wrong
    lora = get_peft_model(copy.deepcopy(backend.model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert not SlotEngine.can_fuse(lora.base_model.model) and SlotEngine.can_fuse(own)
    with pytest.raises(ValueError, match="fused=True needs plain nn.Linear"):
        SlotEngine(lora.base_model.model, 2, 32, backend.stop_ids, fused=True)
    assert backend.fuse  # a backend that loaded its model fuses in place


def test_triton_attention_survives_a_refilled_prefix_leader(backend: HFBackend) -> None:
    """Rows of a prompt read its prefix from the group's first row. When that row finishes first and
    is refilled with another prompt, its followers go back to their own copy: same tokens as SDPA."""
    from engine.gen.engine import Seq, SlotEngine

    a = backend.tokenizer(chat(backend, "Sort a list of numbers."), add_special_tokens=False)["input_ids"]
    b = backend.tokenizer(chat(backend, "Reverse a string, please, in place."), add_special_tokens=False)["input_ids"]
    runs = []
    for attention in ("sdpa", "triton"):
        eng = SlotEngine(backend.model, 2, max(len(a), len(b)) + 24, backend.stop_ids, attention=attention,
                         ignore_eos=True)
        seqs = [Seq(0, 0, a, 2, 0.0, 1.0, 0, sample_key(1, 0)), Seq(0, 1, a, 20, 0.0, 1.0, 0, sample_key(1, 1)),
                Seq(1, 0, b, 20, 0.0, 1.0, 0, sample_key(2, 0))]
        with torch.inference_mode():
            eng.run(seqs)
        runs.append([s.tokens for s in seqs])
        if attention == "triton":  # row 0 led prompt a, then was refilled with b while row 1 went on
            assert eng.fills.tolist() == [2, 1] and eng.lead.tolist() == [0, 0]
    assert runs[0] == runs[1]
