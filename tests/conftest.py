"""Shared fixtures: tiny real models built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

# Kernel tests put their tensors on PMAT_TEST_DEVICE (cpu unless set; cuda on a GPU box). Triton
# kernels then run compiled on CUDA tensors, and under the interpreter on CPU tensors. It must be
# set before any module decorates a kernel, whichever test file imports it first.
os.environ.setdefault("PMAT_TEST_DEVICE", "cpu")
os.environ.setdefault("TRITON_INTERPRET", "0" if os.environ["PMAT_TEST_DEVICE"].startswith("cuda") else "1")

import pytest
import torch

from engine.models.tiny import TinyConfig, build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 checkpoint with a trained byte-level BPE tokenizer and chat template."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", TinyConfig())


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, larger tiny model sharing nothing with the first (a stand-in teacher)."""
    cfg = TinyConfig(hidden_size=96, intermediate_size=192, num_hidden_layers=3, seed=1)
    return build_tiny_model(tmp_path_factory.mktemp("teacher") / "model", cfg)


@pytest.fixture(scope="session")
def kernel_device() -> torch.device:
    """Where a kernel test puts its tensors: PMAT_TEST_DEVICE, cpu by default."""
    return torch.device(os.environ["PMAT_TEST_DEVICE"])


@pytest.fixture(scope="session")
def triton_device(kernel_device: torch.device) -> torch.device:
    """``kernel_device`` for a Triton kernel; skipped where none can run (no triton, or CPU
    tensors without the interpreter: a compiled kernel must not be handed CPU tensors)."""
    pytest.importorskip("triton")
    if kernel_device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton kernels on CPU tensors need TRITON_INTERPRET=1 (or PMAT_TEST_DEVICE=cuda)")
    return kernel_device
