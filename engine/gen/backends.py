"""The backend factory: a model path and a backend name to a loaded ``Backend``.

Apart from ``engine/gen/base.py`` (the protocol the backends implement) so that no backend
module imports the module that imports it.
"""

from __future__ import annotations

from pathlib import Path

from engine.gen.base import Backend, gguf_file


def load_backend(
    model_dir: Path | str, backend: str = "transformers", device: str = "auto", dtype: str = "auto"
) -> Backend:
    """Load a model behind the named backend ('transformers', 'vllm' or 'llama.cpp').

    A GGUF model (see ``gguf_file``) always runs on llama.cpp: what is evaluated is the file
    itself; the backend's ``name`` says so in every record.
    """
    gguf = gguf_file(model_dir)
    if gguf is not None:
        if backend not in ("transformers", "llama.cpp"):
            raise ValueError(f"{gguf}: a GGUF model runs on the llama.cpp backend, not {backend!r}")
        from engine.gen.llamacpp import LlamaCppBackend

        return LlamaCppBackend(gguf, device=device)
    if backend == "llama.cpp":
        raise ValueError(f"backend 'llama.cpp' needs a .gguf model, and {model_dir} holds none")
    if backend == "transformers":
        from engine.gen.hf import HFBackend

        return HFBackend(Path(model_dir), device=device, dtype=dtype)
    if backend == "vllm":
        from engine.gen.vllm_backend import VLLMBackend

        return VLLMBackend(Path(model_dir), device=device, dtype=dtype)
    raise ValueError(f"unknown generation backend {backend!r} (expected 'transformers', 'vllm' or 'llama.cpp')")
