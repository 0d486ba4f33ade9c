"""Shared fixtures: tiny real models built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

# Triton kernels run under the interpreter on CPU-only machines. It must be set before
# any module decorates a kernel, whichever test file imports it first; on a GPU box,
# run the tests with TRITON_INTERPRET=0 to exercise the compiled kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

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
