"""Stage `quantize`: HF checkpoint -> GGUF that llama.cpp loads (qwen2 arch, tokenizer inside).

Tensors stream one at a time through the pmat quantizers (byte-identical to llama.cpp's
reference quantizers; Triton on the GPU). The stage also writes the FP16 GGUF of the same
checkpoint, because the size criterion (AC-009) is the ratio of the two *files*, and
checks that the GGUF's tokenizer (rebuilt by transformers from the GGUF alone, and as
llama.cpp loads the file, when llama-cpp-python is installed) encodes a test text to the
source tokenizer's ids. Per-tensor error statistics go to the metrics;
a ledger record (benchmark "quant") carries the size ratio, bits per weight and errors.
The GGUF itself is what gets evaluated (on llama.cpp, AC-022/AC-023), so no dequantized
copy is written (``gguf_to_hf`` makes one where a comparison with transformers needs it).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any, Literal

import torch

from engine.models.checkpoint import model_dir_hash, open_checkpoint
from engine.models.gguf_export import export_gguf, plan
from engine.sdk.base import StageContext, StageFailed, StageParams
from engine.workspace import atomic_write_json
from pmat_kernels._backend import pick_backend
from pmat_kernels.quant.formats import QType
from pmat_kernels.quant.vectorized import quantize

CHECK_TEXT = (
    "<|im_start|>user\nWrite a function that returns the 3 largest numbers, e.g. [10, 250, 7].<|im_end|>\n"
    "<|im_start|>assistant\ndef top3(xs):\n    return sorted(xs)[-3:]  # O(n log n) \u00e9t\u00e9 \u4f60\u597d\n<|im_end|>"
)


class Params(StageParams):
    mix: Literal["q8_0", "q4_k", "q4_k_m"]  # llama.cpp's Q8_0, pure Q4_K, or the Q4_K_M policy
    backend: Literal["auto", "torch", "triton"] = "auto"  # auto: triton on cuda, torch on cpu
    check_text: str = CHECK_TEXT


INPUTS = {"model": "HF checkpoint dir (qwen2, safetensors, tokenizer.json)"}
OUTPUTS = {
    "gguf": "dir with model-<MIX>.gguf (llama.cpp qwen2, tokenizer and chat template embedded)",
    "gguf_f16": "dir with model-F16.gguf (the size baseline of AC-009)",
}


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    reader = open_checkpoint(inputs["model"])
    biggest = max(math.prod(reader.shape(n)) for n in reader.names())
    return 6 * 4 * biggest + (2 << 30)  # f32 copy, dequantized check copy, error, bytes; + torch


def _export(ctx: StageContext, model: Path, source: str, mix: str, backend: str,
            tag: str) -> tuple[Path, list[dict[str, Any]]]:
    """Export once; a finished file of the same source is reused on a later attempt."""
    out_dir = ctx.work_dir / f"gguf-{mix}"
    out_dir.mkdir(parents=True, exist_ok=True)
    out, done = out_dir / f"model-{mix.upper()}.gguf", ctx.work_dir / f"gguf-{mix}.stats.json"
    if out.is_file() and done.is_file():
        prev = json.loads(done.read_text())
        if prev.get("source") == source:
            return out_dir, prev["stats"]
    total = len(plan(model, mix))
    count = [0]

    def on_tensor(rec: dict[str, Any]) -> None:
        count[0] += 1
        ctx.progress(count[0], total, f"{tag} tensors")
        if tag == "quant":
            ctx.metric("rel_rmse", rec["rel_rmse"], step=count[0], tensor=rec["name"], type=rec["type"])
            ctx.metric("max_abs_err", rec["max_abs_err"], step=count[0], tensor=rec["name"])

    def on_resume(n_done: int, n_total: int) -> None:
        count[0] = n_done
        ctx.warning(f"resuming {out.name} at tensor {n_done + 1} of {n_total}")

    stats = export_gguf(model, out, mix, backend=backend, device=ctx.device, name=model.name,
                        on_tensor=on_tensor, check_cancelled=ctx.check_cancelled, source_id=source,
                        on_resume=on_resume)
    atomic_write_json(done, {"source": source, "stats": stats})
    ctx.checkpoint(1 if tag == "quant" else 2, out)
    return out_dir, stats


def _tokenizer_check(model: Path, gguf_dir: Path, text: str) -> None:
    from transformers import AutoTokenizer

    src = AutoTokenizer.from_pretrained(model)
    gguf_file = next(gguf_dir.glob("*.gguf")).name
    ours = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    _same_ids(src.encode(text, add_special_tokens=False), ours.encode(text, add_special_tokens=False), "transformers")


def _same_ids(a: list[int], b: list[int], reader: str) -> None:
    if a != b:
        first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        raise StageFailed(f"GGUF tokenizer (read by {reader}) differs from the source at token {first}: "
                          f"{a[first:first + 5]} vs {b[first:first + 5]}")


def _llama_check(ctx: StageContext, model: Path, gguf: Path, text: str) -> float | None:
    """Load the GGUF in llama.cpp (what evaluates and serves it) and tokenize ``text`` with the
    file's own tokenizer; 1.0 when it matches the source's ids, None without llama-cpp-python."""
    if importlib.util.find_spec("llama_cpp") is None:
        ctx.warning("llama-cpp-python is not installed: the GGUF was not loaded in llama.cpp here")
        return None
    from transformers import AutoTokenizer

    from engine.gen.llamacpp import LlamaCppBackend

    try:
        llama = LlamaCppBackend(gguf, device="cpu", n_ctx=256)
    except Exception as exc:  # noqa: BLE001 - whatever llama.cpp rejects fails the stage, in one line
        raise StageFailed(f"llama.cpp does not load {gguf.name}: {exc}") from None
    try:
        ours = llama.encode(text)
    finally:
        llama.close()
    _same_ids(AutoTokenizer.from_pretrained(model).encode(text, add_special_tokens=False), ours, "llama.cpp")
    return 1.0


def _backend(ctx: StageContext, params: Params) -> str:
    """Triton on a GPU when it compiles there and agrees with the torch path on a probe block."""
    backend = pick_backend("quantization", params.backend, ctx.device)
    if params.backend != "auto" or backend == "torch":
        return backend
    try:
        gen = torch.Generator(device=ctx.device).manual_seed(0)
        x = torch.randn(4, 512, generator=gen, device=ctx.device)
        for qt in (QType.Q4_K, QType.Q6_K, QType.Q8_0):
            if not torch.equal(quantize(x, qt, backend="triton"), quantize(x, qt, backend="torch")):
                raise RuntimeError(f"{qt.name} bytes differ from the torch path")
        return "triton"
    except Exception as exc:  # noqa: BLE001 - any failure means: use the (identical-bytes) torch path
        ctx.warning(f"Triton quantizer not used on {ctx.device} ({exc}); torch path instead (same bytes)")
        return "torch"


def run(ctx: StageContext, params: Params) -> None:
    model = Path(ctx.inputs["model"])
    backend = _backend(ctx, params)
    source_hash = model_dir_hash(model)
    qdir, stats = _export(ctx, model, source_hash, params.mix, backend, "quant")
    fdir, _ = _export(ctx, model, source_hash, "f16", backend, "f16")
    _tokenizer_check(model, qdir, params.check_text)
    ctx.check_cancelled()

    qfile, ffile = next(qdir.glob("*.gguf")), next(fdir.glob("*.gguf"))
    llama_ok = _llama_check(ctx, model, qfile, params.check_text)
    q_bytes, f_bytes = qfile.stat().st_size, ffile.stat().st_size
    numel = sum(s["numel"] for s in stats)
    sq_err = sum((s["rel_rmse"] ** 2) * s["numel"] for s in stats)  # numel-weighted mean of squared rel. error
    types = sorted({s["type"] for s in stats})
    ctx.metric("size_ratio_vs_f16", q_bytes / f_bytes)
    ctx.metric("bits_per_weight", 8 * q_bytes / numel)

    ctx.publish("gguf", qdir, mix=params.mix)
    ctx.publish("gguf_f16", fdir)
    manifest = ctx.workspace.manifest(ctx.stage, "gguf") or {}
    ctx.record_result({
        "benchmark": "quant",
        "model_hash": manifest.get("sha256"),
        "model_path": manifest.get("path"),
        "dataset_hash": None,
        "protocol": {"mix": params.mix, "source_model_hash": source_hash, "backend": backend,
                     "quantizer": "llama.cpp reference (quantize_row_*_ref), no imatrix",
                     "baseline": "F16 GGUF of the same checkpoint (1-D tensors F32)"},
        "metrics": {
            "size_ratio_vs_f16": q_bytes / f_bytes,
            "gguf_bytes": float(q_bytes),
            "f16_gguf_bytes": float(f_bytes),
            "bits_per_weight": 8 * q_bytes / numel,
            "rel_rmse_overall": math.sqrt(sq_err / numel),
            "rel_rmse_max_tensor": max(s["rel_rmse"] for s in stats),
            "tokenizer_roundtrip": 1.0,
            **({"llama_cpp_tokenizer_roundtrip": llama_ok} if llama_ok is not None else {}),
        },
        "tensor_types": {t: sum(1 for s in stats if s["type"] == t) for t in types},
        "per_tensor": {s["name"]: {"type": s["type"], "rel_rmse": s["rel_rmse"]} for s in stats},
        "device": ctx.device,
    })
