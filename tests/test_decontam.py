"""Decontamination: reworded, renamed and verbatim evaluation problems in training data are caught."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from bench.decontam import DISGUISES, mbpp_rows, rename
from engine.data import mbpp
from engine.data.codegrams import normalise
from engine.data.decontam import (
    ContaminatedData,
    DecontamIndex,
    eval_index,
    plus_items,
    require_clean,
)

MBPP = mbpp.SHIPPED_DIR

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
    worded = [k for k, hits in found.rows.items() if any(h.reason != "examples" for h in hits)]
    assert len(worded) < 0.15 * len(rows)  # MBPP's templated wording alone does not flag a problem
    # twin tasks share test inputs ('divide' / 'multiply two lists using map and lambda'): measured, not a target
    assert len(found.rows) < 0.2 * len(rows)


def test_plus_variants_are_indexed(tmp_path: Path) -> None:
    path = tmp_path / "HumanEvalPlus.jsonl.gz"
    rec = {"task_id": "HumanEval/999", "entry_point": "rotate_matrix_quadrants",
           "prompt": 'def rotate_matrix_quadrants(m):\n    """Rotate each quadrant of a square matrix clockwise '
                     'while keeping the quadrants themselves in place."""\n', "canonical_solution": "    return m\n",
           "base_input": [], "plus_input": []}
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps(rec) + "\n")
    index = eval_index(None, humaneval_plus=path)
    hits = index.check("Please write rotate_matrix_quadrants(grid): turn every quadrant of the square grid clockwise.")
    assert [(h.source, h.task_id) for h in hits] == [("humaneval_plus", "HumanEval/999")]
    bad = tmp_path / "MbppPlus.jsonl"
    bad.write_text(json.dumps({"task_id": "Mbpp/2"}) + "\n")
    with pytest.raises(ValueError, match=r"MbppPlus.jsonl:1: record lacks prompt, entry_point"):
        plus_items(bad, "mbpp_plus")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        plus_items(tmp_path / "nope.jsonl", "mbpp_plus")


def test_every_evaluation_problem_is_caught_verbatim(index: DecontamIndex) -> None:
    from engine.data import humaneval

    prompts = [p.prompt for p in humaneval.load()[0]]
    assert len(index.scan(prompts).rows) == len(prompts) == 164
    statements = [p.text for p in mbpp.load(MBPP, "test")[0]]  # even the shortest MBPP statements
    assert len(index.scan(statements).rows) == len(statements) == 500


# --- the code signal ------------------------------------------------------------------------
# Every disguise of bench/decontam.py is held to 95%, but the paraphrase with its own thesaurus and its
# sentences rotated (measured 131 of 164: synonyms the checker's groups do not know leave short statements
# nothing to match).
# measured floors under the 95% target (docs/DECONTAMINATION.md, Limits: short statements)
RECALL = {"paraphrased_statement_other_thesaurus_sentences_rotated": 0.83,
          "paraphrased_statement_templated_examples_reformatted": 0.9, "test_code_alone_renamed": 0.9}


def test_code_disguises_of_humaneval_are_caught_and_clean_mbpp_rows_are_not(index: DecontamIndex) -> None:
    """>= 95% of HumanEval in every disguise, each refused for its own task; <= 1% of clean MBPP refused."""
    from engine.data import humaneval

    problems = humaneval.load()[0]
    for name in DISGUISES:
        rows = [(p.task_id, row) for p in problems if (row := DISGUISES[name](p))]
        found = index.scan([r for _, r in rows])
        caught = sum(any(h.task_id == t for h in found.rows.get(k, [])) for k, (t, _) in enumerate(rows))
        assert caught >= RECALL.get(name, 0.95) * len(rows), f"{name}: {caught} of {len(rows)}"
    clean = mbpp_rows(MBPP)
    found = index.scan([r for _, r in clean])
    refused = [clean[k][0] for k, hits in found.rows.items() if any(h.source == "humaneval" for h in hits)]
    assert len(clean) == 474 and len(refused) <= 0.01 * len(clean), refused


def test_short_generic_code_is_not_evidence(index: DecontamIndex) -> None:
    """Trivial solutions (HumanEval/53 `return x + y`, /23 `return len(string)`) match too much code to count."""
    generic = ["def add(a, b):\n    return a + b\n", "def size(s):\n    return len(s)\n",
               "def square(n):\n    return n ** 2\n", "def flip(s):\n    return s.swapcase()\n",
               "def mx(xs):\n    return max(xs) if xs else None\n", "def rev(s):\n    return s[::-1]\n",
               "def is_even(n):\n    return n % 2 == 0\n", "def uniq(xs):\n    return sorted(set(xs))\n"]
    assert not index.scan(generic)
    # the same body under the evaluation problem's own (not too common) name is evidence
    assert [h.task_id for h in index.check("def strlen(s):\n    return len(s)\n")] == ["HumanEval/23"]


def test_refusal_names_the_signal_and_the_evaluation_task(index: DecontamIndex) -> None:
    from engine.data import humaneval

    p = {x.task_id: x for x in humaneval.load()[0]}["HumanEval/129"]
    row = chat(DISGUISES["all_code_disguises_at_once"](p))
    with pytest.raises(ContaminatedData, match=r"row 1: humaneval HumanEval/129 \(code, score \d\.\d\d, \d+ normalised "
                                               r"code 8-grams, rarity \d+; statements, score "):
        require_clean([CLEAN[0], row], index, what="sft rows")


def test_normalised_stream_ignores_what_a_disguise_changes() -> None:
    original = ('from typing import List\n\ndef pick(xs: List[int], k: int = 3) -> List[int]:\n'
                '    """Docstring."""\n    out = []  # result\n    for x in xs:\n'
                '        if (x % k == 0):\n            out.append(x)\n    return out\n')
    variants = [
        "def pick(xs,k=3):\n  out=[]\n  for x in xs:\n    if x%k==0: out.append(x)\n  return out\n",
        "from typing import List\nclass Solution:\n    def choose(self, items, step=7):\n        'doc'\n"
        "        res: list = []\n        for it in items:\n            if it % step == 0:\n"
        "                res.append(\n                    it,\n                )\n        return res\n",
    ]
    body = normalise(original)[normalise(original).index("def"):]
    for v in variants:
        stream = normalise(v)
        assert stream[stream.index("def"):] == body, v
    assert "append" in body and "STR" not in body and "NUM" in body
    assert normalise("def pick(xs):\n    return [x for x in xs if x]\n")[-1] == ";"
    assert normalise(original) != normalise(original.replace("out.append(x)", "out.insert(0, x)"))


def test_evalplus_files_get_the_code_signal(tmp_path: Path) -> None:
    from engine.data import humaneval

    p = {x.task_id: x for x in humaneval.load()[0]}["HumanEval/129"]
    he_plus = tmp_path / "HumanEvalPlus.jsonl.gz"
    with gzip.open(he_plus, "wt") as fh:
        fh.write(json.dumps({"task_id": p.task_id, "prompt": p.prompt, "entry_point": p.entry_point,
                             "canonical_solution": p.canonical_solution, "base_input": [], "plus_input": [],
                             "atol": 0, "contract": ""}) + "\n")
    ref = mbpp.load(MBPP, "test")[0][56]  # Mbpp/67, bell numbers: MBPP+ prompts hold a docstring and an assert
    mbpp_plus = tmp_path / "MbppPlus.jsonl"
    mbpp_plus.write_text(json.dumps({"task_id": ref.task_id, "entry_point": ref.entry_point,
                                     "prompt": f'"""\n{ref.text}\nassert {ref.entry_point}(2)==2\n"""\n',
                                     "canonical_solution": ref.canonical_solution, "base_input": [[2]],
                                     "plus_input": []}) + "\n")
    index = eval_index(None, humaneval_plus=he_plus, mbpp_plus=mbpp_plus)
    assert index.items[-1].statement == ref.text
    rows = [DISGUISES["solution_without_docstring_renamed"](p), rename(ref.canonical_solution.replace("\r", ""))]
    found = index.scan(rows)
    assert {(h.source, h.task_id, h.reason) for h in found.rows[0]} >= {("humaneval_plus", "HumanEval/129", "code")}
    assert {(h.source, h.task_id, h.reason) for h in found.rows[1]} >= {("mbpp_plus", "Mbpp/67", "code")}
    assert {h.source for h in found.rows[1]} == {"mbpp_plus"}


def test_mbpp_near_duplicates_across_splits_are_found_by_code(index: DecontamIndex) -> None:
    """Train problems whose reference code is a test problem's (bell numbers, nCr mod p, max occurrences)."""
    rows = dict(mbpp_rows(MBPP))
    for train, test in [("Mbpp/608", "Mbpp/67"), ("Mbpp/952", "Mbpp/402"), ("Mbpp/658", "Mbpp/362")]:
        code = rename(rows[train]["completion"].replace("\r", ""))
        assert ("mbpp_test", test, "code") in {(h.source, h.task_id, h.reason) for h in index.check(code)}


def test_a_solution_inside_a_long_file_is_found_and_scattered_pieces_are_not(index: DecontamIndex) -> None:
    from engine.data import humaneval

    p = {x.task_id: x for x in humaneval.load()[0]}["HumanEval/129"]
    other = "\n\n".join(r["completion"].replace("\r", "") for _, r in mbpp_rows(MBPP))
    mid = len(other) // 2
    row = other[:mid] + "\n\n" + DISGUISES["solution_without_docstring_renamed"](p) + "\n\n" + other[mid:]
    assert ("HumanEval/129", "code") in {(h.task_id, h.reason) for h in index.check(row)}
    lines = DISGUISES["solution_without_docstring_renamed"](p).splitlines()
    chunk = len(other) // len(lines)  # the same lines, each one in a different place of the file
    scattered = "\n".join(other[k * chunk:(k + 1) * chunk] + "\n" + line for k, line in enumerate(lines))
    assert "HumanEval/129" not in {h.task_id for h in index.check(scattered) if h.reason == "code"}
