"""Which implementation a kernel runs, decided once for every kernel in ``pmat_kernels/``.

``auto`` means the Triton kernel on a CUDA device (where it is compiled, and faster) and the
plain torch reference everywhere else; ``torch`` and ``triton`` force one. Triton kernels are
also exercised on CPU tensors under its interpreter (``TRITON_INTERPRET=1``, the tests), where
tiles are kept small so that the tests cross tile boundaries.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with torch on Linux
    triton = tl = None

BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    return triton is not None


def pick_backend(kernel: str, backend: str, device: torch.device | str) -> str:
    """``torch`` or ``triton`` for ``backend`` on ``device``: auto is Triton on CUDA. An unknown
    name is a ValueError and an explicit ``triton`` without Triton a RuntimeError, both naming
    ``kernel``."""
    if backend not in BACKENDS:
        raise ValueError(f"{kernel} backend {backend!r}: expected one of {BACKENDS}")
    if backend == "auto":
        return "triton" if triton is not None and torch.device(device).type == "cuda" else "torch"
    if backend == "triton":
        require_triton(kernel)
    return backend


def require_triton(kernel: str) -> None:
    if triton is None:
        raise RuntimeError(f"{kernel} backend 'triton' requested but triton is not importable")


def interpreted() -> bool:
    """Triton kernels run under the interpreter (on CPU tensors): the tests' small tiles."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def tile(width: int, cap: int, interpreter_cap: int) -> int:
    """A power-of-two tile over ``width`` of at most ``cap`` (``interpreter_cap`` under the interpreter)."""
    return min(interpreter_cap if interpreted() else cap, triton.next_power_of_2(width))
