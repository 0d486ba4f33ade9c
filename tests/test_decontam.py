"""Decontamination: reworded, renamed and verbatim evaluation problems in training data are caught."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from engine.data import mbpp
from engine.data.decontam import (
    ContaminatedData,
    DecontamIndex,
    eval_index,
    plus_items,
    require_clean,
)

MBPP = Path(__file__).resolve().parents[1] / "engine" / "pipelines" / "data" / "mbpp"

# HumanEval/1 (separate_paren_groups) reworded, function renamed: only its substance remains.
REWORDED = ("You get a string made of several clusters of nested parentheses. Split it into separate strings, one "
            "per group, and return them as a list. The groups are balanced (every opening bracket is closed) and "
            "not nested inside each other; spaces must be ignored. Call the function split_clusters.")
# HumanEval/0 reworded, its function name kept.
RENAMED = "Implement has_close_elements(values, limit) returning True if two of the values are closer than limit."
CLEAN = [
    "Write a function that parses an ISO date string and returns the weekday name.",
    "Write a Python function `merge_intervals(xs)` that merges overlapping closed intervals.",
    "def add(a, b):\n    return a + b\n",  # HumanEval/53's name, but a bare common name is not evidence
]


@pytest.fixture(scope="module")
def index() -> DecontamIndex:
    return eval_index(MBPP)


def chat(text: str) -> dict:
    return {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": text}], "chosen": "```python\npass\n```"}


def test_reworded_humaneval_problem_in_training_prompts_is_caught(index: DecontamIndex) -> None:
    rows = [chat(CLEAN[0]), chat(REWORDED), chat(CLEAN[1]), chat(RENAMED), CLEAN[2]]
    found = index.scan(rows)
    assert sorted(found.rows) == [1, 3]
    assert {(h.task_id, h.reason) for h in found.rows[1]} == {("HumanEval/1", "docstring")}
    assert ("HumanEval/0", "name") in {(h.task_id, h.reason) for h in found.rows[3]}


def test_verbatim_solution_is_caught_by_ngrams(index: DecontamIndex) -> None:
    from engine.data import humaneval

    p = {x.task_id: x for x in humaneval.load()[0]}["HumanEval/1"]
    body = "Here is my helper:\n" + p.canonical_solution.replace("    ", "\t")
    hits = index.check(body + "\n# trailing words")
    assert any(h.task_id == "HumanEval/1" and h.reason == "ngram" for h in hits)


def test_require_clean_fails_listing_rows_unless_allowed(index: DecontamIndex) -> None:
    rows = [CLEAN[0], REWORDED, CLEAN[1]]
    with pytest.raises(ContaminatedData, match=r"1 of 3 rows.*\nrow 1: humaneval HumanEval/1 \(docstring"):
        require_clean(rows, index, what="dpo prompts")
    warned: list[str] = []
    found = require_clean(rows, index, allow=True, warn=warned.append)
    assert list(found.rows) == [1] and "allowed by the spec" in warned[0]
    assert list(require_clean(rows, index, allow=[1]).rows) == [1]
    with pytest.raises(ContaminatedData):
        require_clean(rows, index, allow=[0])
    assert not require_clean(CLEAN, index)


def test_mbpp_train_duplicates_of_test_problems_are_flagged(index: DecontamIndex) -> None:
    train, _ = mbpp.load(MBPP, "train")
    rows = [p.text + "\n" + "\n".join(mbpp.tests_of(p)["asserts"]) for p in train]
    found = index.scan(rows)
    flagged = {h.task_id for hits in found.rows.values() for h in hits}
    assert "Mbpp/479" in flagged  # first_Digit appears in both splits
    assert len(found.rows) < 0.15 * len(rows)  # MBPP's templated wording alone does not flag a problem


def test_plus_variants_are_indexed(tmp_path: Path) -> None:
    path = tmp_path / "HumanEvalPlus.jsonl.gz"
    rec = {"task_id": "HumanEval/999", "entry_point": "rotate_matrix_quadrants",
           "prompt": 'def rotate_matrix_quadrants(m):\n    """Rotate each quadrant of a square matrix clockwise '
                     'while keeping the quadrants themselves in place."""\n', "canonical_solution": "    return m\n"}
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps(rec) + "\n")
    index = eval_index(None, humaneval_plus=path)
    hits = index.check("Please write rotate_matrix_quadrants(grid): turn every quadrant of the square grid clockwise.")
    assert [(h.source, h.task_id) for h in hits] == [("humaneval_plus", "HumanEval/999")]
    bad = tmp_path / "MbppPlus.jsonl"
    bad.write_text(json.dumps({"task_id": "Mbpp/2"}) + "\n")
    with pytest.raises(ValueError, match=r"MbppPlus.jsonl: line 1 lacks prompt, entry_point"):
        plus_items(bad, "mbpp_plus")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        plus_items(tmp_path / "nope.jsonl", "mbpp_plus")


def test_every_evaluation_problem_is_caught_verbatim(index: DecontamIndex) -> None:
    from engine.data import humaneval

    prompts = [p.prompt for p in humaneval.load()[0]]
    assert len(index.scan(prompts).rows) == len(prompts) == 164
    statements = [p.text for p in mbpp.load(MBPP, "test")[0]]  # even the shortest MBPP statements
    assert len(index.scan(statements).rows) == len(statements) == 500
