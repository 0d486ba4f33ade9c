"""A model directory whose weights are drawn at load time (engine/rehearsal.py): its marker.

Kept free of torch so that preflight and the console can recognise one cheaply.
"""

from __future__ import annotations

from pathlib import Path

RANDOM_MARKER = "pmat-random-weights.json"


def is_random_source(model_dir: Path | str) -> bool:
    """The directory describes weights drawn at load time (no weight files)."""
    return (Path(model_dir) / RANDOM_MARKER).is_file()
