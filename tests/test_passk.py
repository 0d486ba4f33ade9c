"""pass@k against hand-computed values, its edge cases, and the tolerant ledger reader."""

from __future__ import annotations

import json
from math import comb

import pytest

from engine.data.passk import mean_pass_at_k, pass_at_k, pass_metrics
from engine.results import make_record, read_ledger
from engine.workspace import Workspace


def test_hand_computed_values() -> None:
    # n=5, c=2, k=1: 1 - C(3,1)/C(5,1) = 1 - 3/5
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # n=10, c=3, k=5: 1 - C(7,5)/C(10,5) = 1 - 21/252
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    # n=200, c=17, k=10 against the binomial form
    assert pass_at_k(200, 17, 10) == pytest.approx(1 - comb(183, 10) / comb(200, 10), rel=1e-12)


def test_edges() -> None:
    assert pass_at_k(10, 0, 1) == 0.0  # c = 0
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0  # c = n
    assert pass_at_k(10, 8, 3) == 1.0  # n - c < k: every k-subset holds a pass
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(3, 1, 5) is None  # n < k: undefined
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="k >= 1"):
        pass_at_k(3, 1, 0)


def test_mean_and_metrics() -> None:
    counts = [(5, 2), (5, 0), (5, 5)]
    assert mean_pass_at_k(counts, 1) == pytest.approx((0.4 + 0 + 1) / 3)
    assert mean_pass_at_k([(5, 1), (3, 1)], 5) is None  # one problem has too few samples
    assert set(pass_metrics(counts, [1, 5, 10])) == {"pass@1", "pass@5"}
    assert pass_metrics([(1, 1), (1, 0)], [1]) == {"pass@1": 0.5}  # greedy: fraction passed


def test_ledger_reader_skips_partial_last_line(tmp_path) -> None:
    ws = Workspace(tmp_path / "ws").init()
    rec = make_record(benchmark="humaneval", model_hash="abc", model_path="/m", dataset_hash="d",
                      protocol={"n": 1}, metrics={"pass@1": 0.5})
    with open(ws.ledger_path, "w") as fh:
        fh.write(json.dumps(rec) + "\n")
        fh.write(json.dumps({"benchmark": "x"}) + "\n")  # not keyed to a model: skipped
        fh.write(json.dumps(rec)[:40])  # a writer killed mid-line
    for where in (ws, tmp_path / "ws"):
        (got,) = read_ledger(where)  # written by hand: listed, with why it does not count
        assert {k: got[k] for k in rec} == rec and got["id"] == "ledger:1" and got["ignored"]
    assert read_ledger(tmp_path / "nowhere") == []
    with pytest.raises(ValueError, match="numbers"):
        make_record(benchmark="b", model_hash=None, model_path=None, dataset_hash=None, protocol={},
                    metrics={"pass@1": "high"})
