"""pmat_kernels._backend: one place decides torch or Triton for every kernel (auto = Triton on CUDA)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import pmat_kernels
from pmat_kernels import _backend
from pmat_kernels import nucleus as nu
from pmat_kernels._backend import pick_backend
from pmat_kernels.logprob import token_logprobs
from pmat_kernels.quant import vectorized as V
from pmat_kernels.quant.formats import QType


def test_auto_is_triton_on_cuda_and_torch_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    assert pick_backend("k", "auto", torch.device("cpu")) == "torch"
    assert pick_backend("k", "auto", "cuda:1") == "triton"  # only the device's type counts, no GPU needed
    assert pick_backend("k", "torch", "cuda") == "torch"
    assert pick_backend("k", "triton", "cpu") == "triton"  # forced: the interpreter runs it on CPU tensors
    monkeypatch.setattr(_backend, "triton", None)
    assert pick_backend("k", "auto", "cuda") == "torch"
    with pytest.raises(RuntimeError, match="k backend 'triton' requested but triton is not importable"):
        pick_backend("k", "triton", "cuda")


@pytest.mark.parametrize("kernel", ["logprob", "nucleus", "quantization"])
def test_every_kernel_reads_backend_names_the_same_way(kernel: str) -> None:
    g = torch.Generator().manual_seed(0)
    calls = {
        "logprob": lambda b: token_logprobs(torch.randn(4, 8, generator=g), torch.randn(16, 8, generator=g),
                                            torch.arange(4), backend=b),
        "nucleus": lambda b: nu.sample(torch.randn(2, 16, generator=g).bfloat16(),
                                       *nu.prepare(torch.ones(2), torch.ones(2), torch.zeros(2, dtype=torch.long), 16),
                                       torch.zeros(2, dtype=torch.long), backend=b),
        "quantization": lambda b: V.quantize_blocks(torch.randn(256, generator=g), QType.Q4_K, b),
    }
    with pytest.raises(ValueError, match=f"^{kernel} backend 'gpu': expected one of \\('auto', 'torch', 'triton'\\)$"):
        calls[kernel]("gpu")
    calls[kernel]("auto")  # on CPU tensors: the torch reference


def test_quantizer_auto_on_cpu_is_the_torch_path() -> None:
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(512).astype(np.float32))
    for qt in (QType.Q8_0, QType.Q4_K, QType.Q6_K):
        assert torch.equal(V.quantize_blocks(x, qt, "auto"), V.quantize_blocks(x, qt, "torch"))


def test_no_kernel_decides_the_backend_itself() -> None:
    """The choice, the triton import and the interpreter check live in pmat_kernels/_backend.py only."""
    root = Path(pmat_kernels.__file__).parent
    for path in root.rglob("*.py"):
        if path.name in ("_backend.py", "triton_quant.py"):  # triton_quant is imported only once triton is chosen
            continue
        text = path.read_text()
        for spelling in (r'type == "cuda"', r'"TRITON_INTERPRET"', r"^\s*(import|from) triton\b"):
            assert not re.search(spelling, text, re.M), f"{path.relative_to(root.parent)} spells {spelling!r}"
