"""The generation interface every backend implements (transformers; vLLM and llama.cpp when installed);
``engine.gen.backends.load_backend`` picks and loads one.

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
    stop: tuple[str, ...] = ()  # stop strings: the text ends before the first one generated

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
        if not isinstance(self.stop, tuple) or not all(isinstance(x, str) and x for x in self.stop):
            raise ValueError(f"GenRequest {self.request_id}: stop must be a tuple of non-empty strings, got {self.stop!r}")


@dataclass
class GenOutput:
    """The ``n`` completions of one request, in sample-index order.

    ``finish_reasons`` entries are ``"stop"`` (a stop token or stop string ended it) or ``"length"``
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


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one occurred."""
    cut = min((i for i in (text.find(x) for x in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def is_gguf(model: Path | str) -> bool:
    """Whether a model path names a GGUF model (see ``gguf_file``), whatever state it is in."""
    p = Path(model)
    return (p.suffix == ".gguf" and p.is_file()) or (
        p.is_dir() and not (p / "config.json").exists() and any(p.glob("*.gguf")))


def gguf_file(model: Path | str) -> Path | None:
    """The GGUF file a model path names (a .gguf file, or a directory holding exactly one and no
    HF config, like the quantize stage's ``gguf`` artifact), else None."""
    p = Path(model)
    if p.suffix == ".gguf" and p.is_file():
        return p
    if p.is_dir() and not (p / "config.json").exists():
        found = sorted(p.glob("*.gguf"))
        if len(found) > 1:
            raise ValueError(f"{p}: {len(found)} .gguf files ({', '.join(f.name for f in found)}); name one")
        return found[0] if found else None
    return None


def gguf_problem(model: Path | str) -> str | None:
    """Why a path that names a GGUF model (``gguf_file``) cannot be one, in one line; None if it is
    not a GGUF path at all or looks like a GGUF file (magic and version)."""
    try:
        gguf = gguf_file(model)
    except ValueError as exc:
        return str(exc)
    if gguf is None:
        return None
    try:
        with open(gguf, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        return f"{gguf}: cannot read: {exc.strerror}"
    if head[:4] != b"GGUF" or int.from_bytes(head[4:8], "little") not in (2, 3):
        return f"{gguf}: not a GGUF v2/v3 file (starts with {head!r})"
    return None


def load_tokenizer(model: Path | str):
    """The tokenizer prompts are rendered with: a checkpoint's, or the one embedded in a GGUF
    (transformers rebuilds it from the file, chat template included)."""
    from transformers import AutoTokenizer

    gguf = gguf_file(model)
    if gguf is not None:
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return AutoTokenizer.from_pretrained(model)
