"""The generation interface every backend implements (transformers now, vLLM when installed).

A request carries the exact text sent to the model (chat template already applied), so a
record of it is a record of what the model saw. Seeds are per request and per sample
index: the same (request, sample) yields the same text whatever batch it lands in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class GenRequest:
    """One prompt to complete ``n`` times; ``temperature == 0`` means greedy."""

    request_id: str
    prompt: str
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    n: int = 1

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"GenRequest {self.request_id}: max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"GenRequest {self.request_id}: temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenRequest {self.request_id}: top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"GenRequest {self.request_id}: top_k must be >= 0, got {self.top_k}")
        if self.n < 1:
            raise ValueError(f"GenRequest {self.request_id}: n must be >= 1, got {self.n}")


@dataclass
class GenOutput:
    """The ``n`` completions of one request, in sample-index order.

    ``finish_reasons`` entries are ``"stop"`` (a stop token ended it) or ``"length"``
    (``max_new_tokens`` reached). ``token_counts`` counts generated tokens, stop token
    included when one was produced.
    """

    request_id: str
    texts: list[str]
    token_counts: list[int]
    finish_reasons: list[str]


@runtime_checkable
class Backend(Protocol):
    """A loaded model that completes requests; ``device`` is the device that actually runs."""

    name: str
    device: str

    def generate(self, requests: list[GenRequest]) -> list[GenOutput]:
        """Complete every request; outputs come back in the order of ``requests``."""
        ...


def load_backend(
    model_dir: Path | str, backend: str = "transformers", device: str = "auto", dtype: str = "auto"
) -> Backend:
    """Load ``model_dir`` behind the named backend ('transformers' or 'vllm')."""
    if backend == "transformers":
        from engine.gen.hf import HFBackend

        return HFBackend(Path(model_dir), device=device, dtype=dtype)
    if backend == "vllm":
        from engine.gen.vllm_backend import VLLMBackend

        return VLLMBackend(Path(model_dir), device=device, dtype=dtype)
    raise ValueError(f"unknown generation backend {backend!r} (expected 'transformers' or 'vllm')")
