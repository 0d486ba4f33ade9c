"""Shared fixtures: tiny real models built once per test session."""

from __future__ import annotations

from pathlib import Path

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
