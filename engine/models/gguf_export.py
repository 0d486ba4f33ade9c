"""Hugging Face Qwen2 checkpoint -> GGUF (llama.cpp's qwen2 architecture), one tensor at a time.

* Names and metadata are those llama.cpp's convert_hf_to_gguf.py writes for Qwen2.
* The tokenizer goes in whole: byte-level BPE tokens, merges, token types, bos/eos/pad,
  the chat template, and the pre-tokenizer name that makes llama.cpp split text the way
  the source tokenizer does ("qwen2" for Qwen's regex, "gpt-2" for plain ByteLevel).
* Types follow llama.cpp's llama_tensor_get_type for the supported mixes: 1-D tensors
  (norms, biases) stay F32; ``q4_k_m`` puts Q6_K on output.weight and on attn_v/ffn_down
  of the layers ``use_more_bits`` picks; rows not a multiple of 256 fall back
  Q4_K -> Q5_0 and Q6_K -> Q8_0 as llama.cpp does.
* A killed export resumes at the first unfinished tensor (``<out>.progress`` journal).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.jsonl import append_jsonl, read_objects
from engine.models.checkpoint import open_checkpoint
from engine.models.gguf_writer import GGUFStreamWriter, GValue
from pmat_kernels.quant.formats import BLOCK, QK_K, QType
from pmat_kernels.quant.vectorized import dequantize, quantize

MIXES = ("f16", "q8_0", "q4_k", "q4_k_m")
FILE_TYPE = {"f16": 1, "q8_0": 7, "q4_k": 14, "q4_k_m": 15}  # llama_ftype (q4_k reported as Q4_K_S)
DEFAULT_TYPE = {"f16": QType.F16, "q8_0": QType.Q8_0, "q4_k": QType.Q4_K, "q4_k_m": QType.Q4_K}
FALLBACK = {QType.Q4_K: QType.Q5_0, QType.Q6_K: QType.Q8_0}

_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
_SKIP = re.compile(r"rotary_emb\.inv_freq$")

# gguf TokenType
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def gguf_name(hf_name: str) -> tuple[str, int]:
    """HF tensor name -> (GGUF name, layer index or -1); unknown names are errors."""
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name], -1
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_name)
    if m and m.group(2) in _LAYER:
        return f"blk.{m.group(1)}.{_LAYER[m.group(2)]}", int(m.group(1))
    raise ValueError(f"tensor {hf_name!r} has no qwen2 GGUF name")


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's choice of the layers that get more bits in the _M mixes."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def choose_type(name: str, shape: tuple[int, ...], mix: str, n_layer: int, has_output: bool) -> QType:
    """The GGML type llama-quantize gives tensor ``name`` (torch ``shape``) under ``mix``."""
    if mix not in MIXES:
        raise ValueError(f"quantization mix {mix!r}: expected one of {', '.join(MIXES)}")
    if len(shape) < 2:
        return QType.F32
    qtype = DEFAULT_TYPE[mix]
    if mix == "f16":
        return qtype
    ne0 = shape[-1]
    if name == "output.weight" or (not has_output and name == "token_embd.weight"):
        if ne0 % QK_K:
            return QType.Q8_0 if ne0 % 32 == 0 else QType.F16
        return QType.Q6_K if mix == "q4_k_m" else qtype
    if mix == "q4_k_m" and (name.endswith("attn_v.weight") or name.endswith("ffn_down.weight")):
        if use_more_bits(int(name.split(".")[1]), n_layer):
            qtype = QType.Q6_K
    block = BLOCK[qtype][0]
    if ne0 % block:
        if qtype not in FALLBACK:
            raise ValueError(f"{name}: rows of {ne0} are not a multiple of {block} ({qtype.name}), as llama.cpp refuses")
        qtype = FALLBACK[qtype]
        if ne0 % BLOCK[qtype][0]:
            qtype = QType.F16
    return qtype


@dataclass(frozen=True)
class TensorPlan:
    hf_name: str
    name: str
    shape: tuple[int, ...]
    qtype: QType


def plan(model_dir: Path, mix: str) -> list[TensorPlan]:
    """Every tensor of the checkpoint with its GGUF name and type, in llama.cpp's order."""
    reader = open_checkpoint(model_dir)
    n_layer = int(reader.config["num_hidden_layers"])
    named = [(gguf_name(n), n) for n in reader.names() if not _SKIP.search(n)]
    has_output = any(g == "output.weight" for (g, _), _ in named)
    named.sort(key=lambda item: (item[0][1], item[0][0]))  # layer, then name (weight_name_comparer)
    return [TensorPlan(hf, g, tuple(reader.shape(hf)), choose_type(g, tuple(reader.shape(hf)), mix, n_layer, has_output))
            for (g, _), hf in named]


# ----------------------------------------------------------------------------- tokenizer


def _pre_tokenizer_name(tok_json: dict[str, Any], path: Path) -> str:
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    pre = tok_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    splits = [p for p in parts if p.get("type") == "Split"]
    if len(splits) == 1 and splits[0].get("pattern", {}).get("Regex") == PRETOKENIZE_REGEX:
        return "qwen2"
    if not splits and len(parts) == 1 and parts[0].get("type") == "ByteLevel" and parts[0].get("use_regex", True):
        return "gpt-2"
    raise ValueError(f"{path}: pre-tokenizer {json.dumps(pre)[:200]} has no llama.cpp equivalent here (qwen2 or gpt-2)")


def tokenizer_metadata(model_dir: Path, vocab_size: int, config: dict[str, Any]) -> list[tuple[str, GValue, Any]]:
    """The tokenizer.* keys of convert_hf_to_gguf.py for a byte-level BPE tokenizer."""
    from transformers import AutoTokenizer

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"{model_dir}: no tokenizer.json (the GGUF would have no tokenizer)")
    tok = AutoTokenizer.from_pretrained(model_dir)
    # the tokenizer as transformers runs it (Qwen2Tokenizer re-installs Qwen's split regex)
    tok_json = json.loads(tok.backend_tokenizer.to_str())
    if tok_json.get("model", {}).get("type") != "BPE":
        raise ValueError(f"{path}: model type {tok_json.get('model', {}).get('type')!r}, expected BPE")
    vocab = tok.get_vocab()
    if len(vocab) > vocab_size:
        raise ValueError(f"{model_dir}: tokenizer has {len(vocab)} tokens, config vocab_size is {vocab_size}")
    reverse = {i: t for t, i in vocab.items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        text = reverse[i]
        tokens.append(text)
        if i in added:
            special = added[i].special or (text.startswith("<|") and text.endswith("|>"))
            types.append(CONTROL if special else USER_DEFINED)
        else:
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"].get("merges", [])]
    kv: list[tuple[str, GValue, Any]] = [
        ("tokenizer.ggml.model", GValue.STRING, "gpt2"),
        ("tokenizer.ggml.pre", GValue.STRING, _pre_tokenizer_name(tok_json, path)),
        ("tokenizer.ggml.tokens", GValue.ARRAY, (GValue.STRING, tokens)),
        ("tokenizer.ggml.token_type", GValue.ARRAY, (GValue.INT32, types)),
        ("tokenizer.ggml.merges", GValue.ARRAY, (GValue.STRING, merges)),
    ]
    for key, attr in (("eos", "eos_token_id"), ("padding", "pad_token_id"), ("bos", "bos_token_id")):
        value = getattr(tok, attr, None)
        value = config.get(attr) if value is None else value
        if value is not None:
            kv.append((f"tokenizer.ggml.{key}_token_id", GValue.UINT32, int(value)))
    kv.append(("tokenizer.ggml.add_bos_token", GValue.BOOL, bool(getattr(tok, "add_bos_token", False))))
    if tok.chat_template:
        kv.append(("tokenizer.chat_template", GValue.STRING, tok.chat_template))
    return kv


def metadata(model_dir: Path, mix: str, name: str | None = None) -> list[tuple[str, GValue, Any]]:
    """general.*, qwen2.* and tokenizer.* keys for the GGUF of ``model_dir``."""
    cfg = open_checkpoint(model_dir).config
    if cfg.get("model_type") != "qwen2":
        raise ValueError(f"{model_dir}/config.json: model_type {cfg.get('model_type')!r}, only qwen2 is exported")
    u32 = GValue.UINT32
    kv: list[tuple[str, GValue, Any]] = [
        ("general.architecture", GValue.STRING, "qwen2"),
        ("general.type", GValue.STRING, "model"),
        ("general.name", GValue.STRING, name or model_dir.name),
        ("general.file_type", u32, FILE_TYPE[mix]),
        ("general.quantization_version", u32, 2),
        ("qwen2.block_count", u32, int(cfg["num_hidden_layers"])),
        ("qwen2.context_length", u32, int(cfg["max_position_embeddings"])),
        ("qwen2.embedding_length", u32, int(cfg["hidden_size"])),
        ("qwen2.feed_forward_length", u32, int(cfg["intermediate_size"])),
        ("qwen2.attention.head_count", u32, int(cfg["num_attention_heads"])),
        ("qwen2.attention.head_count_kv", u32, int(cfg.get("num_key_value_heads", cfg["num_attention_heads"]))),
        ("qwen2.rope.freq_base", GValue.FLOAT32, float(cfg.get("rope_theta", 10000.0))),
        ("qwen2.attention.layer_norm_rms_epsilon", GValue.FLOAT32, float(cfg["rms_norm_eps"])),
    ]
    rs = cfg.get("rope_scaling")
    if rs and rs.get("type", rs.get("rope_type")) not in (None, "default"):
        kv += [("qwen2.rope.scaling.type", GValue.STRING, str(rs.get("type", rs.get("rope_type")))),
               ("qwen2.rope.scaling.factor", GValue.FLOAT32, float(rs["factor"]))]
        if "original_max_position_embeddings" in rs:
            kv.append(("qwen2.rope.scaling.original_context_length", u32, int(rs["original_max_position_embeddings"])))
    return kv + tokenizer_metadata(model_dir, int(cfg["vocab_size"]), cfg)


# ----------------------------------------------------------------------------- export


def _plan_digest(kv: list, tensors: list[TensorPlan], source_id: str) -> str:
    """What fixes the file's layout and bytes: source, metadata, tensor table, quantizer version."""
    h = hashlib.sha256(b"pmat-gguf-1" + source_id.encode())
    for k, t, v in kv:
        h.update(json.dumps([k, int(t), repr(v)]).encode())
    h.update(json.dumps([[p.name, p.shape, int(p.qtype)] for p in tensors]).encode())
    return h.hexdigest()



def _resume_point(journal: Path, digest: str) -> list[dict[str, Any]]:
    lines = read_objects(journal)
    if not lines or lines[0].get("digest") != digest:
        return []
    return lines[1:]


def export_gguf(model_dir: Path | str, out_path: Path | str, mix: str, *, backend: str = "torch",
                device: str = "cpu", name: str | None = None,
                on_tensor: Callable[[dict[str, Any]], None] | None = None,
                check_cancelled: Callable[[], None] | None = None, source_id: str = "",
                on_resume: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Write the GGUF; returns one stats dict per tensor (name, type, rel_rmse, max_abs_err).

    Resumes from ``<out_path>.progress`` when it describes the same plan and ``source_id``
    (pass the checkpoint's content hash so that a changed source starts over);
    ``on_resume(done, total)`` is told where it continues.
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    kv = metadata(model_dir, mix, name)
    tensors = plan(model_dir, mix)
    digest = _plan_digest(kv, tensors, source_id)
    journal = out_path.with_name(out_path.name + ".progress")
    done = _resume_point(journal, digest) if out_path.is_file() else []
    if not done:
        journal.unlink(missing_ok=True)
        append_jsonl(journal, [{"digest": digest}])
    elif on_resume:
        on_resume(len(done), len(tensors))
    writer = GGUFStreamWriter(out_path, kv, [(p.name, p.shape, p.qtype) for p in tensors], start=len(done))
    reader = open_checkpoint(model_dir)
    stats = list(done)
    try:
        for p in tensors[len(done):]:
            if check_cancelled:
                check_cancelled()
            w = reader.get(p.hf_name).to(device)
            w2 = w.reshape(-1, p.shape[-1]) if w.dim() > 1 else w.reshape(1, -1)
            data = quantize(w2, p.qtype, backend=backend)
            back = dequantize(data, p.qtype, tuple(w2.shape))
            ref = w2.float()
            err = back - ref
            norm = float(ref.norm())
            rec = {"name": p.name, "type": p.qtype.name, "numel": w.numel(), "bytes": data.numel(),
                   "rel_rmse": float(err.norm()) / norm if norm else 0.0, "max_abs_err": float(err.abs().max())}
            writer.write(p.name, memoryview(data.cpu().numpy()).cast("B"))
            writer.sync()
            append_jsonl(journal, [rec])
            stats.append(rec)
            if on_tensor:
                on_tensor(rec)
            del w, w2, data, back, ref, err
        writer.close()
    except BaseException:
        writer.abort()
        raise
    journal.unlink(missing_ok=True)
    return stats


# ----------------------------------------------------------------------------- back to HF


def gguf_to_hf(gguf_path: Path | str, out_dir: Path | str, source_dir: Path | str,
               dtype: torch.dtype = torch.float32, max_shard_bytes: int = 5 << 30) -> Path:
    """Dequantize a pmat GGUF back into a Hugging Face checkpoint (for perplexity of the
    quantized model). Config and tokenizer files come from ``source_dir``, the model the
    GGUF was exported from; every source tensor must be in the GGUF."""
    from gguf import GGUFReader

    from engine.models.checkpoint_writer import ShardedWriter, copy_side_files, set_config_dtype

    source = open_checkpoint(source_dir)
    to_hf = {gguf_name(n)[0]: n for n in source.names() if not _SKIP.search(n)}
    found: set[str] = set()
    with ShardedWriter(out_dir, max_shard_bytes) as writer:
        for t in GGUFReader(str(gguf_path)).tensors:
            if t.name not in to_hf:
                raise ValueError(f"{gguf_path}: tensor {t.name} is not in {source_dir}")
            hf = to_hf[t.name]
            qtype = QType(int(t.tensor_type))
            data = torch.from_numpy(t.data.reshape(-1).view("uint8").copy())
            writer.add(hf, dequantize(data, qtype, tuple(source.shape(hf))).to(dtype))
            found.add(t.name)
    missing = sorted(set(to_hf) - found)
    if missing:
        raise ValueError(f"{gguf_path}: tensors missing: {', '.join(missing[:5])}")
    copy_side_files(source_dir, out_dir)
    set_config_dtype(out_dir, dtype)
    return Path(out_dir)
