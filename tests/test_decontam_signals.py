"""The decontamination signals that close the last gaps: a solution body alone, junk between statements,
loops <-> comprehensions, paraphrased statements; and the stages that pass every evaluation file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from bench.decontam import (
    insert_mixed_junk,
    mbpp_rows,
    paraphrase,
    paraphrase_harder,
    paraphrase_templated,
    rename,
    roll_loops,
    unroll_comprehensions,
)
from engine.data import humaneval, mbpp
from engine.data.codegrams import normalise
from engine.data.codeshape import canonical
from engine.data.decontam import DecontamIndex, eval_index
from engine.data.example_literals import is_pair, literals

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def index() -> DecontamIndex:
    return eval_index(mbpp.SHIPPED_DIR)


@pytest.fixture(scope="module")
def problems() -> dict[str, humaneval.Problem]:
    return {p.task_id: p for p in humaneval.load()[0]}


def hits_for(index: DecontamIndex, row: object, task: str) -> set[str]:
    """The signals that refuse ``row`` for ``task``."""
    found = index.scan([row])
    return {h.reason for h in found.rows.get(0, []) if h.task_id == task}


def test_a_row_that_is_a_whole_solution_body_is_refused(index: DecontamIndex, problems: dict) -> None:
    """One-line bodies (/23 `return len(string)`, /53 `return x + y`) are the solution when they are the row."""
    for task in ("HumanEval/23", "HumanEval/53", "HumanEval/2", "HumanEval/28"):
        body = problems[task].canonical_solution
        assert "body" in hits_for(index, body, task), task
        assert "body" in hits_for(index, {"prompt": "Complete the function.", "completion": body}, task), task
        assert "body" in hits_for(index, {"messages": [{"role": "assistant",
                                                        "content": f"Here:\n```python\n{body}```\n"}]}, task), task
    # a function that merely contains such a line, or names it otherwise, is not that body
    clean = ["def size(s):\n    return len(s)\n", "def add(a, b):\n    return a + b\n",
             "def count_words(text):\n    words = text.split()\n    return len(words)\n",
             {"prompt": "Write a function to add two integers.", "completion": "def add(a, b):\n    return a + b\n"}]
    assert not index.scan(clean).rows


def test_junk_statements_do_not_hide_code(index: DecontamIndex, problems: dict) -> None:
    """Short solutions the n-grams missed once junk sat between every two statements (prints, pass, dead stores)."""
    for task in ("HumanEval/3", "HumanEval/35", "HumanEval/44", "HumanEval/56", "HumanEval/61", "HumanEval/110"):
        p = problems[task]
        row = insert_mixed_junk(rename(p.prompt + p.canonical_solution))
        assert hits_for(index, row, task) & {"code", "statements"}, (task, row)


def test_loops_and_comprehensions_meet(index: DecontamIndex, problems: dict) -> None:
    """A comprehension unrolled into an accumulating loop, and a loop rolled into a comprehension, are caught."""
    for task in ("HumanEval/21", "HumanEval/22", "HumanEval/26", "HumanEval/30", "HumanEval/42", "HumanEval/100"):
        p = problems[task]
        row = unroll_comprehensions(p.prompt + p.canonical_solution)
        assert row and "code" in hits_for(index, rename(row), task), task
    rolled = [(t, roll_loops(p.prompt + p.canonical_solution)) for t, p in problems.items()]
    rolled = [(t, r) for t, r in rolled if r]
    assert len(rolled) >= 4
    assert all("code" in hits_for(index, rename(r), t) for t, r in rolled), rolled


def test_canonical_shape() -> None:
    """Loop, comprehension, junk and a return temporary reduce to one stream; a loop that reads its result stays."""
    forms = [
        "def f(xs, k):\n    return [x * 2 for x in xs if x > k]\n",
        "def f(xs, k):\n    out = []\n    for x in xs:\n        if x > k:\n            out.append(x * 2)\n    return out\n",
        "def g(a, b):\n    r: list = []\n    tmp = 3\n    pass\n    for v in a:\n        print('v', v)\n"
        "        if v > b:\n            r.append(v * 2)\n    if False:\n        r = None\n    return r\n",
        "def f(xs, k):\n    res = [x * 2 for x in xs if x > k]\n    return res\n",
    ]
    streams = {tuple(normalise(canonical(f))) for f in forms}
    assert len(streams) == 1, streams
    assert "append" not in next(iter(streams))
    summed = {tuple(normalise(canonical(f))) for f in (
        "def s(xs):\n    t = 0\n    for x in xs:\n        t += x * x\n    return t\n",
        "def s(xs):\n    return sum(x * x for x in xs)\n", "def s(xs):\n    return sum([x * x for x in xs])\n")}
    assert len(summed) == 1, summed
    reads_itself = "def f(xs):\n    out = []\n    for x in xs:\n        if x not in out:\n            out.append(x)\n    return out\n"
    assert "append" in normalise(canonical(reads_itself))
    assert canonical("Not code (at all:\n    return") == "Not code (at all:\n    return"


def test_paraphrased_statements_are_caught(index: DecontamIndex, problems: dict) -> None:
    """Statements with words swapped for synonyms (two thesauri, one with its sentences rotated)."""
    for task in ("HumanEval/0", "HumanEval/5", "HumanEval/8", "HumanEval/12", "HumanEval/13", "HumanEval/21"):
        assert hits_for(index, paraphrase(problems[task]), task) & {"wording", "concepts", "docstring"}, task
    for task in ("HumanEval/5", "HumanEval/14", "HumanEval/24", "HumanEval/27"):
        assert hits_for(index, paraphrase_harder(problems[task]), task), task
    # a code-like function name in the statement ('pairs_sum_to_zero takes a list') is renamed by a paraphrase:
    # it is not one of the words the statement must be matched by; a plain name (median) is a word and stays
    row = paraphrase_harder(problems["HumanEval/43"])
    assert "pairs_sum_to_zero" not in row and "docstring" in hits_for(index, row, "HumanEval/43"), row
    assert "median" in paraphrase_harder(problems["HumanEval/47"])
    # MBPP's one-line templates are not read by word order: a train problem is not a test problem's twin by wording
    rows = dict(mbpp_rows(mbpp.SHIPPED_DIR))
    assert not {h.reason for h in index.check(rows["Mbpp/624"]["prompt"])} & {"wording", "concepts"}
    # and no clean MBPP row is refused for a HumanEval problem by the new signals but one (refused by code too)
    clean = list(rows.items())
    found = index.scan([r for _, r in clean])
    new = {(clean[k][0], h.task_id, h.reason) for k, hits in found.rows.items() for h in hits
           if h.source.startswith("humaneval") and h.reason in ("body", "wording", "concepts")}
    assert new <= {("Mbpp/960", "HumanEval/55", "body")}, new  # tiling: fib's recursion


def test_training_stages_pass_the_plus_files_the_spec_names(tmp_path: Path) -> None:
    """distill, sft, dpo and pairs read HumanEval+ in the pmat pipeline; a row only HumanEval+ holds is refused."""
    from engine.spec import load_spec
    from engine.stages import distill, dpo, pairs, sft

    spec = load_spec(ROOT / "engine/pipelines/pmat.yaml")
    for stage, kind in (("distill", distill), ("sft", sft), ("dpo", dpo), ("pairs", pairs)):
        params = kind.Params.model_validate(spec.stages[stage].params)
        assert params.humaneval_plus == "dataset:humaneval_plus" and params.mbpp_plus is None, stage
    path = tmp_path / "HumanEvalPlus.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps({"task_id": "HumanEval/999", "entry_point": "interleave_halves", "base_input": [],
                             "plus_input": [], "prompt": "def interleave_halves(xs):\n",
                             "canonical_solution": "    h = len(xs) // 2\n    return [v for p in zip(xs[:h], xs[h:])"
                                                   " for v in p] + xs[2 * h:]\n"}) + "\n")
    index = eval_index(str(mbpp.SHIPPED_DIR), None, str(path), None)  # as the spec gives them: strings
    found = index.scan([{"completion": "    h = len(xs) // 2\n    return [v for p in zip(xs[:h], xs[h:]) for v in p]"
                                       " + xs[2 * h:]\n"}])
    assert {(h.source, h.task_id) for h in found.rows[0]} == {("humaneval_plus", "HumanEval/999")}


def test_a_long_parseable_row_is_scanned_in_linear_time(index: DecontamIndex) -> None:
    """Canonical shape walks the tree a fixed number of times (once per body made a long file quadratic)."""
    import time

    code = "\n\n".join(r["completion"].replace("\r", "") for _, r in mbpp_rows(mbpp.SHIPPED_DIR))  # 474 functions
    t0 = time.process_time()
    index.scan([{"messages": [{"role": "assistant", "content": code}]}])
    assert time.process_time() - t0 < 5.0


def test_search_loops_and_any_all_meet(index: DecontamIndex) -> None:
    """``for ...: if c: return False`` + ``return True`` is ``all(not c ...)``: short searches written with any/all."""
    loop = "def f(l, t):\n    for e in l:\n        if e >= t:\n            return False\n    return True\n"
    forms = [loop, "def f(l, t):\n    return all(e < t for e in l)\n", "def f(l, t):\n    return not any(e >= t for e in l)\n"]
    assert len({tuple(normalise(canonical(f))) for f in forms}) == 1
    rows = {"HumanEval/52": "def below(xs, limit):\n    return all(x < limit for x in xs)\n",
            "HumanEval/40": "def g(l):\n    return any(l[i] + l[j] + l[k] == 0 for i in range(len(l))"
                            " for j in range(i + 1, len(l)) for k in range(j + 1, len(l)))\n"}
    for task, row in rows.items():
        assert "code" in hits_for(index, row, task), task


def test_literals_are_read_however_they_are_written() -> None:
    """Quotes, spacing, tuple or list, call or table: one literal; prose apostrophes and plain values are not."""
    doctest = ">>> f([1.0, 2.8, 3.0], 0.3)\nTrue\n>>> f('Hello world')\n'3e25960a79dbc69b674cd4ec67a72c62'\n"
    table = ('Input: ([1.0,2.8,3.0] , 0.3) -> Output: yes. Input: "Hello world" gives '
             '"3e25960a79dbc69b674cd4ec67a72c62"; it\'s done')
    assert {k for k in literals(doctest) if not is_pair(k)} == literals(table) != set()
    assert len({k for k in literals(doctest) if is_pair(k)}) == 2  # f(...) with the result on the next line
    assert literals("It's 2.0, and 7 (not 12) items: [], [5], True, 'ab'") == set()
    assert literals("g((1, 2), {'k': [3, 4]})") >= literals("g([1, 2], {'k': (3, 4)})")


def test_examples_kept_under_any_wording_are_caught(index: DecontamIndex, problems: dict) -> None:
    """A paraphrase that renames the function and rewords everything but keeps the examples' values."""
    rows = {"HumanEval/0": "Samples: for ([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) say yes; for [1.0, 2.0, 3.0] and"
                           " 0.5 say no.",
            "HumanEval/162": '{"input": "Hello world", "expected": "3e25960a79dbc69b674cd4ec67a72c62"}',
            "HumanEval/74": "compare(['hi', 'admin'], ['hI', 'Hi']) gives ['hI', 'Hi'], and (['4'], ['1', '2', '3',"
                            " '4', '5']) gives ['4']"}
    for task, row in rows.items():
        assert "examples" in hits_for(index, row, task), task
    # the bench's templated paraphrase (a third thesaurus, 'Sample k: given ... the answer is ...')
    for task in ("HumanEval/0", "HumanEval/12", "HumanEval/47", "HumanEval/57"):
        assert "examples" in hits_for(index, paraphrase_templated(problems[task]), task), task
    # one shared literal, or common ones, are not evidence
    clean = ["assert f([1, 2, 3]) == 6\nassert f([]) == 0\nassert f('abc') == 'cba'\nassert f((1, 1)) == 2",
             "Input: [1.0, 2.0, 3.0] Output: 2.0", "print('Hello world')"]
    assert not {h.reason for hits in index.scan(clean).rows.values() for h in hits} & {"examples"}


def test_deeply_nested_brackets_are_read_in_linear_time() -> None:
    """A hostile row of nested brackets: each character is read in a bounded number of literal spans."""
    import time

    row = ("[" * 900 + "1" + "]" * 900 + "\n") * 120
    t0 = time.process_time()
    assert literals(row) == set()
    assert literals("[[[[1, 2], [3, 4]], 'abc']]") >= {"abc", ("seq", (1, 2))}
    assert time.process_time() - t0 < 1.5


def test_calls_with_their_results_are_examples_whatever_the_function_is_called(index: DecontamIndex,
                                                                               problems: dict) -> None:
    """Examples of small numbers tell by their pairing: /13's gcd examples and tests, function renamed."""
    pair = literals(">>> g(3, 7)\n1\n")
    assert pair == literals("assert g(3, 7) == 1") == literals("g(3, 7) -> 1") and pair
    assert "examples" in hits_for(index, "my_gcd(3, 5) -> 1\nmy_gcd(25, 15) -> 5\n", "HumanEval/13")
    test = problems["HumanEval/13"].test.replace("candidate", "solution_under_test")
    assert "examples" in hits_for(index, test, "HumanEval/13")
    assert not index.scan(["assert f(0) == 0\nassert f(1) == 1\nassert f(2) == 4\nassert f(10) == 100"]).rows
