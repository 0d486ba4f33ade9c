"""Result records, the append-only results ledger reader, and the unbiased pass@k estimator.

A record is keyed by what it measured: the model's content hash, the dataset hash and
the protocol (everything that changes the number). Gates read records through
``read_ledger``; gate evaluation itself lives elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.workspace import Workspace

REQUIRED_KEYS = ("benchmark", "model_hash", "model_path", "dataset_hash", "protocol", "metrics")


def pass_at_k(n: int, c: int, k: int) -> float | None:
    """Unbiased pass@k for one problem: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021).

    Computed as 1 - prod_{i=n-c+1..n} (1 - k/i), stable for large n. Undefined (None) when
    fewer than ``k`` samples were drawn.
    """
    if n < 0 or not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
    if n < k:
        return None
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float | None:
    """Mean of pass@k over problems given (n, c) per problem; None if any problem has n < k."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def pass_metrics(counts: list[tuple[int, int]], ks: Iterable[int]) -> dict[str, float]:
    """{"pass@k": value} for every k the sample counts support (k <= min n)."""
    out = {}
    for k in sorted(set(ks)):
        value = mean_pass_at_k(counts, k)
        if value is not None:
            out[f"pass@{k}"] = value
    return out


def make_record(*, benchmark: str, model_hash: str | None, model_path: str | Path | None,
                dataset_hash: str | None, protocol: dict[str, Any], metrics: dict[str, float],
                **extra: Any) -> dict[str, Any]:
    """A ledger record with the required keys checked (metrics flat, name -> float)."""
    bad = {k: v for k, v in metrics.items() if not isinstance(v, (int, float)) or isinstance(v, bool)}
    if bad:
        raise ValueError(f"result metrics must be numbers, got {bad}")
    return {"benchmark": benchmark, "model_hash": model_hash,
            "model_path": str(model_path) if model_path is not None else None,
            "dataset_hash": dataset_hash, "protocol": dict(protocol),
            "metrics": {k: float(v) for k, v in metrics.items()}, **extra}


def read_ledger(workspace: Workspace | Path) -> list[dict[str, Any]]:
    """Every complete record of a workspace's ledger, oldest first.

    A partial last line (a writer killed mid-append) is skipped; so is any line that is
    not a JSON object with the required keys (they cannot be keyed to a model).
    """
    path = workspace.ledger_path if isinstance(workspace, Workspace) else Workspace(Path(workspace)).ledger_path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    records = []
    for raw in data.split(b"\n")[:-1]:  # the last piece is empty, or a line still being written
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict) and all(k in rec for k in REQUIRED_KEYS):
            records.append(rec)
    return records


def results_for(workspace: Workspace | Path, *, model_hash: str, benchmark: str | None = None) -> list[dict]:
    """Records of exactly one model (by content hash), optionally one benchmark."""
    return [r for r in read_ledger(workspace)
            if r["model_hash"] == model_hash and (benchmark is None or r["benchmark"] == benchmark)]
