"""The unbiased pass@k estimator (Chen et al. 2021), shared by scoring and the ledger's check
that a record's pass@k recomputes from its per-problem outcomes."""

from __future__ import annotations

from collections.abc import Iterable


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
