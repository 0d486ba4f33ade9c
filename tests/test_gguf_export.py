"""GGUF export: llama.cpp's type policy, files the `gguf` package and transformers read back
(weights, config, tokenizer), a stage run with its ledger record, resume after a kill."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.events import read_events
from engine.models.gguf_export import choose_type, export_gguf, gguf_to_hf, plan
from engine.models.tiny import TinyConfig, build_tiny_model
from engine.sdk.base import JobSpec
from engine.sdk.run import params_hash, run_inline
from engine.workspace import Workspace
from pmat_kernels.quant import reference as R
from pmat_kernels.quant.formats import QType
from pmat_kernels.quant.vectorized import dequantize

gguf = pytest.importorskip("gguf")
TEXT = "def add(a, b):\n    return a + b  # 123 h\u00e9llo<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def k_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hidden 256 so that K-quants apply (the shared tiny model's 64 falls back)."""
    cfg = TinyConfig(hidden_size=256, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, seed=3)
    return build_tiny_model(tmp_path_factory.mktemp("k") / "model", cfg)


def test_q4_k_m_policy_for_qwen_7b_shapes():
    """28 layers: llama.cpp's use_more_bits picks these for attn_v / ffn_down."""
    q6_layers = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27}
    for i in range(28):
        for name, shape in ((f"blk.{i}.attn_v.weight", (512, 3584)), (f"blk.{i}.ffn_down.weight", (3584, 18944))):
            want = QType.Q6_K if i in q6_layers else QType.Q4_K
            assert choose_type(name, shape, "q4_k_m", 28, True) == want, name
        for name in ("attn_q.weight", "attn_k.weight", "attn_output.weight", "ffn_up.weight", "ffn_gate.weight"):
            assert choose_type(f"blk.{i}.{name}", (3584, 3584), "q4_k_m", 28, True) == QType.Q4_K
        assert choose_type(f"blk.{i}.attn_norm.weight", (3584,), "q4_k_m", 28, True) == QType.F32
    assert choose_type("output.weight", (152064, 3584), "q4_k_m", 28, True) == QType.Q6_K
    assert choose_type("token_embd.weight", (152064, 3584), "q4_k_m", 28, True) == QType.Q4_K
    assert choose_type("token_embd.weight", (152064, 3584), "q4_k_m", 28, False) == QType.Q6_K  # tied: output's type
    assert choose_type("output.weight", (152064, 3584), "q8_0", 28, True) == QType.Q8_0
    # rows not a multiple of 256: llama.cpp's fallbacks
    assert choose_type("blk.3.ffn_up.weight", (128, 64), "q4_k_m", 8, True) == QType.Q5_0
    assert choose_type("blk.0.attn_v.weight", (128, 64), "q4_k_m", 8, True) == QType.Q8_0
    assert choose_type("output.weight", (512, 64), "q4_k_m", 8, True) == QType.Q8_0
    assert choose_type("blk.3.ffn_up.weight", (128, 48), "q4_k", 8, True) == QType.F16
    with pytest.raises(ValueError, match="not a multiple of 32"):
        choose_type("blk.3.ffn_up.weight", (128, 48), "q8_0", 8, True)
    with pytest.raises(ValueError, match="quantization mix 'q3_k'"):
        choose_type("blk.3.ffn_up.weight", (128, 256), "q3_k", 8, True)


def test_tied_embeddings_take_the_output_type(tmp_path: Path):
    """No output.weight: llama.cpp quantizes token_embd as the output tensor (Q6_K under Q4_K_M)."""
    cfg = TinyConfig(hidden_size=256, intermediate_size=256, num_hidden_layers=2, tie_word_embeddings=True, seed=4)
    model = build_tiny_model(tmp_path / "tied", cfg)
    types = {p.name: p.qtype for p in plan(model, "q4_k_m")}
    assert "output.weight" not in types and types["token_embd.weight"] == QType.Q6_K
    assert types["blk.0.attn_q.weight"] == QType.Q4_K


def _fields(reader) -> dict:
    out = {}
    for name, f in reader.fields.items():
        out[name] = f.contents() if hasattr(f, "contents") else f.parts[f.data[0]]
    return out


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_k_model_export_reads_back_everywhere(k_model_dir: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "m.gguf"
    stats = export_gguf(k_model_dir, out, "q4_k_m")
    reader = gguf.GGUFReader(str(out))
    meta = _fields(reader)
    assert meta["general.architecture"] == "qwen2" and meta["qwen2.block_count"] == 4
    assert meta["qwen2.embedding_length"] == 256 and meta["tokenizer.ggml.pre"] == "qwen2"
    assert meta["general.file_type"] == 15 and "<|im_start|>" in meta["tokenizer.chat_template"]
    src_tok = AutoTokenizer.from_pretrained(k_model_dir)
    assert meta["tokenizer.ggml.eos_token_id"] == src_tok.eos_token_id
    assert meta["tokenizer.ggml.padding_token_id"] == src_tok.pad_token_id

    # Q6_K exactly where the policy says (4 layers: i >= 7*4//8 = 3, or (i - 0) % 3 == 2), read back
    types = {t.name: QType(int(t.tensor_type)) for t in reader.tensors}
    for i in range(4):
        want = QType.Q6_K if i in (2, 3) else QType.Q4_K
        assert types[f"blk.{i}.attn_v.weight"] == want and types[f"blk.{i}.ffn_down.weight"] == want
        assert types[f"blk.{i}.attn_q.weight"] == QType.Q4_K and types[f"blk.{i}.ffn_norm.weight"] == QType.F32
    assert types["output.weight"] == QType.Q6_K and types["token_embd.weight"] == QType.Q4_K
    assert [s["type"] for s in stats] == [types[s["name"]].name for s in stats]

    # gguf's dequantizer == ours on every tensor; a few rows equal the reference port's bytes
    src = {p.name: p for p in plan(k_model_dir, "q4_k_m")}
    weights = {}
    for t in reader.tensors:
        raw = np.asarray(t.data).reshape(-1).view(np.uint8)
        theirs = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(int(t.tensor_type))).reshape(-1)
        ours = dequantize(torch.from_numpy(raw.copy()), types[t.name], src[t.name].shape).reshape(-1).numpy()
        assert np.array_equal(theirs.view(np.uint32), ours.view(np.uint32)), t.name
        weights[t.name] = raw
    from safetensors.torch import load_file

    hf = load_file(str(k_model_dir / "model.safetensors"))
    for name, hf_name, qt in (("blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight", "Q4_K"),
                              ("blk.2.attn_v.weight", "model.layers.2.self_attn.v_proj.weight", "Q6_K")):
        rows = hf[hf_name][:8].float().numpy().reshape(-1)
        ref = R.QUANTIZE[qt](rows)
        assert np.array_equal(weights[name][: ref.size], ref), name

    # transformers builds the model and tokenizer from the GGUF alone
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    ids = src_tok.encode(TEXT)
    assert tok.encode(TEXT) == ids
    m0 = AutoModelForCausalLM.from_pretrained(k_model_dir, dtype=torch.float32)
    m1 = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32)
    a, b = _logits(m0, ids), _logits(m1, ids)
    assert float((a - b).norm() / a.norm()) < 0.3  # a random tiny model; 4-bit weights

    # dequantize back to HF: the same numbers transformers' GGUF loader computed
    back = gguf_to_hf(out, tmp_path / "back", k_model_dir)
    m2 = AutoModelForCausalLM.from_pretrained(back, dtype=torch.float32)
    assert torch.allclose(_logits(m2, ids), b, atol=1e-5)
    assert AutoTokenizer.from_pretrained(back).encode(TEXT) == ids


def test_stage_on_the_shared_tiny_model(tiny_model_dir: Path, tmp_path: Path):
    """Hidden 64: every K-quant row falls back (Q4_K -> Q5_0, output -> Q8_0); ledger record."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ws = Workspace(tmp_path / "ws")
    outcome = run_inline(ws, "quantize", "quantize", params={"mix": "q4_k_m"}, inputs={"model": tiny_model_dir},
                         outputs=["gguf", "gguf_f16"])
    events = read_events(ws.job_log("quantize.1"))
    assert outcome == "ok", [e for e in events if e["kind"] in ("job_finished", "warning")]
    qdir, fdir = ws.artifact_path("quantize", "gguf"), ws.artifact_path("quantize", "gguf_f16")
    qfile, ffile = next(qdir.glob("*.gguf")), next(fdir.glob("*.gguf"))
    types = {t.name: QType(int(t.tensor_type)) for t in gguf.GGUFReader(str(qfile)).tensors}
    # 2 layers: use_more_bits picks layer 1 (i >= 7*2//8); its Q6_K falls back to Q8_0
    assert types["output.weight"] == QType.Q8_0 and types["blk.1.attn_v.weight"] == QType.Q8_0
    assert types["blk.0.attn_v.weight"] == QType.Q5_0 and types["blk.0.ffn_down.weight"] == QType.Q5_0
    assert types["blk.1.ffn_up.weight"] == QType.Q5_0 and types["blk.1.ffn_down.weight"] == QType.Q8_0
    assert {t for n, t in types.items() if n.endswith("norm.weight") or n.endswith("bias")} == {QType.F32}
    f16_types = {QType(int(t.tensor_type)) for t in gguf.GGUFReader(str(ffile)).tensors}
    assert f16_types == {QType.F16, QType.F32}

    rec = [json.loads(x) for x in ws.ledger_path.read_text().splitlines()][-1]
    assert rec["benchmark"] == "quant" and rec["protocol"]["mix"] == "q4_k_m"
    assert rec["metrics"]["size_ratio_vs_f16"] == pytest.approx(qfile.stat().st_size / ffile.stat().st_size)
    assert 0.3 < rec["metrics"]["size_ratio_vs_f16"] < 0.8  # tiny: F32 norms and the header weigh in
    assert rec["model_hash"] == ws.manifest("quantize", "gguf")["sha256"]
    # the file loads in llama.cpp, whose own tokenizer (from the file) gives the source's ids
    llama = importlib.util.find_spec("llama_cpp") is not None
    assert rec["metrics"].get("llama_cpp_tokenizer_roundtrip") == (1.0 if llama else None)
    metrics = [e for e in events if e["kind"] == "metric" and e["name"] == "rel_rmse"]
    assert len(metrics) == len(types) and all(0 <= e["value"] < 0.1 for e in metrics)

    back = gguf_to_hf(qfile, tmp_path / "back", tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok.encode(TEXT)
    m0 = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    m1 = AutoModelForCausalLM.from_pretrained(back, dtype=torch.float32)
    a, b = _logits(m0, ids), _logits(m1, ids)
    assert float((a - b).norm() / a.norm()) < 0.3


def test_export_resumes_after_a_kill(k_model_dir: Path, tmp_path: Path):
    whole = tmp_path / "whole.gguf"
    export_gguf(k_model_dir, whole, "q8_0")
    part = tmp_path / "part.gguf"
    calls = [0]

    def die_after_ten() -> None:
        calls[0] += 1
        if calls[0] > 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_gguf(k_model_dir, part, "q8_0", check_cancelled=die_after_ten)
    journal = tmp_path / "part.gguf.progress"
    assert len(journal.read_text().splitlines()) == 11  # digest + 10 tensors
    stats = export_gguf(k_model_dir, part, "q8_0")
    assert not journal.exists() and len(stats) == len(plan(k_model_dir, "q8_0"))
    assert hashlib.sha256(part.read_bytes()).digest() == hashlib.sha256(whole.read_bytes()).digest()


def test_stage_kill_9_then_resume_writes_the_same_file(k_model_dir: Path, tmp_path: Path):
    params, inputs = {"mix": "q4_k_m"}, {"model": k_model_dir}
    ref_ws = Workspace(tmp_path / "ref")
    assert run_inline(ref_ws, "quantize", "quantize", params=params, inputs=inputs, outputs=["gguf", "gguf_f16"]) == "ok"

    ws = Workspace(tmp_path / "ws").init()
    job = JobSpec(job_id="quantize.1", stage="quantize", kind="quantize", attempt=1, workspace=str(ws.root),
                  params=params, inputs={k: str(v) for k, v in inputs.items()}, params_hash=params_hash(params),
                  outputs=["gguf", "gguf_f16"], device="cpu", seed=0)
    job.save(ws.job_file(job.job_id))
    proc = subprocess.Popen([sys.executable, "-m", "engine.sdk.run", str(ws.job_file(job.job_id))],
                            cwd=Path(__file__).resolve().parents[1], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(e["kind"] == "progress" for e in read_events(ws.job_log("quantize.1"))) >= 8:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    first = read_events(ws.job_log("quantize.1"))
    assert proc.returncode == -signal.SIGKILL and not any(e["kind"] == "job_finished" for e in first)

    assert run_inline(ws, "quantize", "quantize", params=params, inputs=inputs, attempt=2,
                      outputs=["gguf", "gguf_f16"]) == "ok"
    second = read_events(ws.job_log("quantize.2"))
    assert any(e["kind"] == "warning" and "resuming model-Q4_K_M.gguf" in e["message"] for e in second)
    assert ws.manifest("quantize", "gguf")["sha256"] == ref_ws.manifest("quantize", "gguf")["sha256"]
    a = [json.loads(x) for x in ws.ledger_path.read_text().splitlines()][-1]
    b = [json.loads(x) for x in ref_ws.ledger_path.read_text().splitlines()][-1]
    assert a["metrics"] == b["metrics"] and a["per_tensor"] == b["per_tensor"]
