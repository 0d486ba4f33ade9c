"""The llama.cpp backend (``llama-cpp-python``, the ``llama`` extra): generation from a GGUF file.

This is how the submitted artifact, the Q4_K_M GGUF, is evaluated: llama.cpp's own kernels on
the quantized weights, its own tokenizer (the one embedded in the file), not a dequantized
proxy. Semantics match the transformers backend: the prompt is sent as rendered (special
tokens parsed, no BOS added), generation ends at an end-of-generation token of the GGUF
(counted in ``token_counts``, not in the text), at a stop string (text cut before it) or at
``max_new_tokens``. Sampling has no min-p, typical-p or repeat penalty, as in transformers;
its random stream is llama.cpp's, seeded per (request seed, sample index), so sampled texts
are reproducible here but not equal to another backend's.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from engine.gen.base import GenOutput, GenRequest, cut_at_stop
from engine.gen.sampling import sample_key

DEFAULT_CTX = 8192


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise RuntimeError("a .gguf model needs llama-cpp-python (pip install -e '.[llama]', or "
                           "scripts/setup.sh with the prebuilt wheel)") from None
    return llama_cpp


def gguf_shape(gguf: Path) -> dict[str, int]:
    """Layers, KV heads, head size and training context of a GGUF, from its metadata."""
    from gguf import GGUFReader

    reader = GGUFReader(gguf)

    def field(key: str) -> int:
        f = reader.fields.get(key)
        if f is None:
            raise ValueError(f"{gguf}: no {key} in the GGUF metadata")
        return int(f.parts[f.data[0]][0])

    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    heads = field(f"{arch}.attention.head_count")
    return {"layers": field(f"{arch}.block_count"), "kv_heads": field(f"{arch}.attention.head_count_kv"),
            "head_dim": field(f"{arch}.embedding_length") // heads, "n_ctx_train": field(f"{arch}.context_length")}


def context_size(shape: dict[str, int], max_len: int = 0) -> int:
    """The context a backend opens: DEFAULT_CTX, capped by the training context, at least max_len."""
    return max(max_len, min(DEFAULT_CTX, shape["n_ctx_train"]))


def gguf_memory_bytes(gguf: Path, max_len: int) -> int:
    """Admission estimate: the mapped file + an f16 KV cache of the context + runtime slack."""
    shape = gguf_shape(gguf)
    kv = 2 * shape["layers"] * shape["kv_heads"] * shape["head_dim"] * 2 * context_size(shape, max_len)
    return Path(gguf).stat().st_size + kv + (512 << 20)


class LlamaCppBackend:
    """One llama.cpp context; the samples of a request reuse the prompt's KV prefix."""

    name = "llama.cpp"

    def __init__(self, gguf: Path, device: str = "auto", *, n_ctx: int | None = None,
                 n_threads: int | None = None) -> None:
        llama_cpp = _llama_cpp()
        gpu = llama_cpp.llama_supports_gpu_offload() and device != "cpu"
        if device.startswith("cuda") and not gpu:  # the record's device says cpu: slow, not wrong
            warnings.warn(f"device {device!r} requested but this llama-cpp-python build has no GPU offload: "
                          "running on the CPU (build it with CMAKE_ARGS=-DGGML_CUDA=on)", stacklevel=2)
        self.path = Path(gguf)
        self.llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=n_ctx or context_size(gguf_shape(self.path)),
                                   n_gpu_layers=-1 if gpu else 0,
                                   n_threads=n_threads or max(1, (os.cpu_count() or 2) // 2), seed=0,
                                   logits_all=False, verbose=False)
        self.device = "cuda" if gpu else "cpu"
        vocab = self.llm._model.vocab  # noqa: SLF001 - the model's vocab handle, for its EOG set
        self.stop_ids = sorted(t for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t))

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a prompt exactly as sent: special tokens parsed, no BOS added."""
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def _one(self, ids: list[int], r: GenRequest, sample_index: int) -> tuple[str, int, str]:
        if len(ids) + r.max_new_tokens > self.llm.n_ctx():
            raise ValueError(f"request {r.request_id}: {len(ids)} prompt + {r.max_new_tokens} new tokens exceed "
                             f"the llama.cpp context of {self.llm.n_ctx()}")
        self.llm.set_seed(sample_key(r.seed, sample_index) % 0xFFFFFFFF)  # 0xFFFFFFFF: llama.cpp's 'random'
        stops, tokens, finish = set(self.stop_ids), [], "length"
        for tok in self.llm.generate(ids, top_k=r.top_k, top_p=r.top_p, min_p=0.0, typical_p=1.0,
                                     temp=r.temperature, repeat_penalty=1.0):
            tokens.append(tok)
            if tok in stops:
                finish = "stop"
                break
            if r.stop and cut_at_stop(self._text(tokens), r.stop)[1]:
                finish = "stop"
                break
            if len(tokens) >= r.max_new_tokens:
                break
        body = tokens[:-1] if tokens and tokens[-1] in stops else tokens
        text, _ = cut_at_stop(self._text(body), r.stop)
        return text, len(tokens), finish

    def _text(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens, special=False).decode("utf-8", errors="replace")

    def generate(self, requests: list[GenRequest]) -> list[GenOutput]:
        outs = []
        for r in requests:
            ids = self.encode(r.prompt)
            if not ids:
                raise ValueError(f"request {r.request_id}: empty prompt")
            out = GenOutput(r.request_id, [], [], [])
            for j in range(r.n):
                text, count, finish = self._one(ids, r, j)
                out.texts.append(text)
                out.token_counts.append(count)
                out.finish_reasons.append(finish)
            outs.append(out)
        return outs

    def close(self) -> None:
        """Free the model and context now (not in ``__del__`` at interpreter exit)."""
        self.llm.close()
