"""The stage kind registry: a kind's name is its module ``engine.stages.<kind>``, imported by
importlib on first use, so the spec and the supervisor find a kind without importing the kinds
(which pull in torch) and without depending on the floor the kinds sit on."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

KINDS_PACKAGE = "engine.stages"
KINDS_DIR = Path(__file__).parent / "stages"


def load_stage(kind: str) -> ModuleType:
    """Import the module implementing a stage kind."""
    if not kind.isidentifier() or kind.startswith("_"):
        raise ValueError(f"no stage kind {kind!r}")
    try:
        return importlib.import_module(f"{KINDS_PACKAGE}.{kind}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{KINDS_PACKAGE}.{kind}":
            raise ValueError(f"no stage kind {kind!r} (no module engine/stages/{kind}.py)") from None
        raise


def stage_kinds() -> list[str]:
    """Every kind's name: the public modules of ``engine/stages/``."""
    return sorted(p.stem for p in KINDS_DIR.glob("*.py") if not p.stem.startswith("_"))
