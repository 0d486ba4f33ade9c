"""The llama.cpp backend on the demo's GGUF: embedded tokenizer, parity with transformers, eval stage.

Why greedy outputs agree only up to near-ties: the GGUF's weights and the dequantized checkpoint's
are the same numbers, but llama.cpp quantizes the activations to 8 bits for its quantized dot
products (Q8_0/Q8_K) and sums in another order, while transformers multiplies in float32. The
tiny random model's logits are nearly flat (std ~0.16), so a top-1/top-2 gap smaller than that
activation error (max |delta logit| ~0.006 measured) can flip a greedy choice; the test pins that
every disagreement is such a near-tie and that texts with no near-tie are identical.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp")

from engine.events import read_events  # noqa: E402
from engine.gen.backends import load_backend  # noqa: E402
from engine.gen.base import GenRequest, gguf_file, load_tokenizer  # noqa: E402
from engine.gen.llamacpp import LlamaCppBackend  # noqa: E402
from engine.models.gguf_export import export_gguf, gguf_to_hf  # noqa: E402
from engine.results import read_ledger  # noqa: E402
from engine.sdk.run import run_inline  # noqa: E402
from engine.workspace import Workspace, content_hash  # noqa: E402

ASKS = ["Write a function add(a, b).", "def fib(n):", "Sort a list of tuples by their second item.",
        "hello", "Reverse a string s", "Return the largest of three numbers."]
NEW = 32


@pytest.fixture(scope="module")
def gguf_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quantize stage's ``gguf`` artifact for the demo's tiny model: a dir with one Q4_K_M file."""
    out = tmp_path_factory.mktemp("gguf") / "gguf"
    out.mkdir()
    export_gguf(tiny_model_dir, out / "model-Q4_K_M.gguf", "q4_k_m", backend="torch", device="cpu", name="tiny")
    return out


@pytest.fixture(scope="module")
def dequantized(gguf_dir: Path, tiny_model_dir: Path) -> Path:
    out = gguf_dir.parent / "dequantized"
    gguf_to_hf(gguf_file(gguf_dir), out, tiny_model_dir, dtype=torch.float32)
    return out


@pytest.fixture(scope="module")
def backend(gguf_dir: Path):
    b = load_backend(gguf_dir)
    yield b
    b.close()


def _prompts(tok) -> list[str]:
    chats = [tok.apply_chat_template([{"role": "user", "content": a}], tokenize=False, add_generation_prompt=True)
             for a in ASKS]
    return [*chats, "def f(x):\n    return", "import os\n"]


def test_gguf_loads_with_its_embedded_tokenizer_and_chat_template(gguf_dir: Path, tiny_model_dir: Path,
                                                                  backend: LlamaCppBackend) -> None:
    from transformers import AutoTokenizer

    src = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert isinstance(backend, LlamaCppBackend) and backend.name == "llama.cpp" and backend.device == "cpu"
    assert backend.llm.metadata["tokenizer.chat_template"] == src.chat_template
    ours = load_tokenizer(gguf_dir)  # what the eval stage renders prompts with: the GGUF's own
    assert ours.chat_template == src.chat_template
    vocab = src.get_vocab()
    assert {vocab["<|im_end|>"], vocab["<|endoftext|>"]} <= set(backend.stop_ids)
    texts = [*_prompts(src), "x = {'a': [1, 2.5e-3]}\n\tpass  # \u00e9t\u00e9 \u4f60\u597d \U0001f600"]
    for text in texts:
        assert ours.apply_chat_template([{"role": "user", "content": text}], tokenize=False) == \
            src.apply_chat_template([{"role": "user", "content": text}], tokenize=False)
        ids = src.encode(text, add_special_tokens=False)
        assert backend.encode(text) == ids, text
        assert backend.llm.detokenize(ids, special=True).decode() == text


def test_greedy_agrees_with_transformers_on_the_dequantized_weights(gguf_dir: Path, dequantized: Path,
                                                                    backend: LlamaCppBackend) -> None:
    from transformers import AutoModelForCausalLM

    hf = load_backend(dequantized, device="cpu", dtype="float32")
    prompts = _prompts(hf.tokenizer)
    reqs = [GenRequest(f"r{i}", p, NEW) for i, p in enumerate(prompts)]
    ours, theirs = backend.generate(reqs), hf.generate(reqs)
    model = AutoModelForCausalLM.from_pretrained(dequantized, dtype=torch.float32).eval()
    forced = llama_cpp.Llama(model_path=str(gguf_file(gguf_dir)), n_ctx=512, logits_all=True, verbose=False)
    same, worst, ties, agree, prefix_tokens = 0, 0.0, 0, 0.0, 0
    try:
        for r, o, t in zip(reqs, ours, theirs, strict=True):
            # teacher-forced on transformers' greedy continuation: both logit sets at every position
            ids = hf.encode(r.prompt + t.texts[0])
            start = len(hf.encode(r.prompt)) - 1
            forced.reset()
            forced.eval(ids)
            a = np.asarray(forced.scores[start:len(ids)])
            with torch.no_grad():
                b = model(torch.tensor([ids])).logits[0, start:].numpy()
            delta = float(np.abs(a - b).max())
            worst = max(worst, delta)
            top2 = np.sort(b, axis=-1)[:, -2:]
            near_tie = (top2[:, 1] - top2[:, 0]) < 2 * delta
            # every choice the two disagree on is a near-tie of transformers' own logits
            assert not np.any((a.argmax(-1) != b.argmax(-1)) & ~near_tie), r.request_id
            ties += int(near_tie.any())
            agree += float((a.argmax(-1) == b.argmax(-1)).mean())
            # up to the first near-tie nothing can flip: both backends generated the same tokens
            first = int(near_tie.argmax()) if near_tie.any() else len(near_tie)
            shared = hf.tokenizer.decode(ids[start + 1:start + 1 + first], skip_special_tokens=True)
            assert o.texts[0].startswith(shared) and t.texts[0].startswith(shared), r.request_id
            prefix_tokens += first
            same += o.texts[0] == t.texts[0]
            assert o.finish_reasons == t.finish_reasons == ["length"] and o.token_counts == [NEW]
    finally:
        forced.close()
    assert worst < 0.02, worst  # measured 0.0058 on this model
    assert same >= len(reqs) // 2 and agree / len(reqs) > 0.95, (same, agree)
    print(f"greedy texts identical {same}/{len(reqs)} ({NEW} tokens); teacher-forced top-1 agreement "
          f"{agree / len(reqs):.3f}; tokens before the first near-tie {prefix_tokens / len(reqs):.1f} on average; "
          f"max |dlogit| {worst:.4f}")


@pytest.mark.parametrize("tie", [False, True])
def test_k_quants_of_a_7b_shaped_model_agree(tie: bool, tmp_path: Path) -> None:
    """Rows of 256: the Q4_K and Q6_K tensors the real Q4_K_M has (the tiny model's fall back to
    Q5_0/Q8_0); tied embeddings (Qwen2.5 <= 3B) put the Q6_K token_embd in the output's place."""
    from transformers import AutoModelForCausalLM

    from engine.models.tiny import TinyConfig, build_tiny_model

    model = build_tiny_model(tmp_path / "model", TinyConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                                                            tie_word_embeddings=tie))
    gguf = tmp_path / "model-Q4_K_M.gguf"
    stats = export_gguf(model, gguf, "q4_k_m", backend="torch", device="cpu", name="k")
    assert {s["type"] for s in stats} == {"F32", "Q4_K", "Q6_K"}
    gguf_to_hf(gguf, tmp_path / "deq", model, dtype=torch.float32)
    ids = load_tokenizer(model).encode("def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n" * 2)
    forced = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, logits_all=True, verbose=False)
    forced.eval(ids)
    got = np.asarray(forced.scores[:len(ids)])
    forced.close()
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "deq", dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
    # measured: max |delta| 0.021 / 0.020 against a logit std of 0.32; top-1 agreement 0.98 / 0.97
    assert np.abs(got - want).max() < 0.15 * want.std()
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.9


@pytest.mark.parametrize(("hidden", "layers", "tie"), [(64, 2, False), (256, 8, False), (256, 8, True)])
def test_q4_k_m_export_is_byte_identical_to_llama_quantize(hidden: int, layers: int, tie: bool, tmp_path: Path) -> None:
    """llama.cpp's own quantizer (llama-quantize's API, no imatrix) on our F16 GGUF gives every
    tensor the type and the bytes of our Q4_K_M export: fallbacks, use_more_bits layers, tied output."""
    import ctypes

    from gguf import GGUFReader
    from safetensors.torch import load_file, save_file

    from engine.models.tiny import TinyConfig, build_tiny_model

    model = build_tiny_model(tmp_path / "model", TinyConfig(hidden_size=hidden, intermediate_size=2 * hidden,
                                                            num_hidden_layers=layers, tie_word_embeddings=tie))
    weights = model / "model.safetensors"  # f16-exact weights: both quantizers then see the same numbers
    save_file({k: v.half().float() for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
    export_gguf(model, tmp_path / "ours.gguf", "q4_k_m", backend="torch", device="cpu", name="t")
    export_gguf(model, tmp_path / "f16.gguf", "f16", backend="torch", device="cpu", name="t")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, 1
    assert llama_cpp.llama_model_quantize(str(tmp_path / "f16.gguf").encode(), str(tmp_path / "theirs.gguf").encode(),
                                          ctypes.byref(params)) == 0
    ours = {t.name: t for t in GGUFReader(str(tmp_path / "ours.gguf")).tensors}
    theirs = {t.name: t for t in GGUFReader(str(tmp_path / "theirs.gguf")).tensors}
    assert list(ours) == list(theirs)
    for name, t in ours.items():
        assert t.tensor_type == theirs[name].tensor_type, name
        assert np.asarray(t.data).tobytes() == np.asarray(theirs[name].data).tobytes(), name


def test_sampling_stops_and_counts(backend: LlamaCppBackend) -> None:
    prompt = "def f(x):\n    return"
    greedy = backend.generate([GenRequest("g", prompt, NEW)])[0]
    stop = greedy.texts[0][5:8]
    assert stop.strip(), greedy.texts[0]
    cut = backend.generate([GenRequest("s", prompt, NEW, stop=(stop, "\x00never"))])[0]
    head = greedy.texts[0][:greedy.texts[0].index(stop)]
    assert cut.texts == [head] and cut.finish_reasons == ["stop"] and 0 < cut.token_counts[0] < NEW
    sampled = GenRequest("t", prompt, 16, temperature=1.0, top_p=0.95, top_k=50, seed=3, n=3)
    one, two = backend.generate([sampled])[0], backend.generate([sampled, GenRequest("g", prompt, NEW)])[0]
    assert one.texts == two.texts and len(set(one.texts)) > 1  # per-sample seeds, batch-independent
    assert one.token_counts == [16, 16, 16] and one.finish_reasons == ["length"] * 3
    with pytest.raises(ValueError, match="exceed the llama.cpp context"):
        backend.generate([GenRequest("long", prompt, 100_000)])


def test_backend_choice_is_by_model_file(gguf_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="runs on the llama.cpp backend, not 'vllm'"):
        load_backend(gguf_dir, "vllm")
    with pytest.raises(ValueError, match="needs a .gguf model"):
        load_backend(tiny_model_dir, "llama.cpp")
    two = tmp_path / "two"
    shutil.copytree(gguf_dir, two)
    shutil.copy(gguf_file(gguf_dir), two / "other.gguf")
    with pytest.raises(ValueError, match="2 .gguf files"):
        gguf_file(two)
    assert gguf_file(tiny_model_dir) is None
    # the supervisor's preflight takes a GGUF model input (and says why a broken one is not)
    from engine.preflight import path_problem

    assert path_problem(gguf_dir, must_be_model=True) is None
    assert "2 .gguf files" in path_problem(two, must_be_model=True)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model-Q4_K_M.gguf").write_bytes(b"PK\x03\x04junk")
    assert "not a GGUF v2/v3 file" in path_problem(bad, must_be_model=True)
    if not llama_cpp.llama_supports_gpu_offload():  # a CPU build asked for CUDA runs on the CPU and says so
        with pytest.warns(UserWarning, match="no GPU offload"):
            b = LlamaCppBackend(gguf_file(gguf_dir), device="cuda")
        assert b.device == "cpu"
        b.close()


def test_eval_stage_scores_the_gguf_on_llama_cpp(gguf_dir: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    params = {"protocol": "humaneval", "seed": 0, "overrides": {"max_new_tokens": 16}, "ks": [1], "limit": 3,
              "unit_problems": 3, "exec_workers": 1}
    outcome = run_inline(ws, "q4_humaneval", "eval", params, {"model": gguf_dir}, outputs=["results"])
    errors = [e for e in read_events(ws.job_log("q4_humaneval.1")) if e["kind"] == "job_finished"]
    assert outcome == "ok", errors
    (rec,) = read_ledger(ws)
    assert rec["backend"] == "llama.cpp" and rec["model_hash"] == content_hash(gguf_dir)
    assert rec["n_problems"] == 3 and set(rec["metrics"]) >= {"pass@1"}
    assert rec["benchmark"] == "humaneval" and rec["protocol"]["max_new_tokens"] == 16
