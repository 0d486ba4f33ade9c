"""Build evalplus-format data on the spot, from HumanEval and MBPP files that ship here.

The demo and the verdict-parity tests need HumanEval+/MBPP+ files without downloading the
releases. Base inputs are the literal arguments of the original tests; plus inputs are
type-preserving mutations of them that the canonical solution accepts (evalplus's own
generator is type-aware mutation too, seeded by the same inputs). A few tasks written here
add what HumanEval lacks: set and Counter outputs, inputs where the reference is slow.
The files say what they are: task ids keep the originals', and the data is never the
pinned release (its sha256 differs), so results on it are marked as user-pinned.
"""

from __future__ import annotations

import ast
import copy
import json
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.data.humaneval import Problem

EXTRA_TASKS = [  # (task_id, prompt, canonical solution, base inputs, atol)
    ("HumanEval/900", 'def unique_chars(s: str) -> set:\n    """The set of characters of s."""\n',
     "    return set(s)\n", [["abca"], [""], ["xyz"]], 0.0),
    ("HumanEval/901", 'from collections import Counter\n\n\ndef word_counts(text: str) -> Counter:\n'
     '    """How often each word of text occurs."""\n', "    return Counter(text.split())\n",
     [["a b a"], ["one"], [""]], 0.0),
    ("HumanEval/902", 'def slow_square(x: int) -> int:\n    """x squared, computed at a leisurely pace."""\n',
     "    import time\n    time.sleep(0.3)\n    return x * x\n", [[3], [-2]], 0.0),
    ("HumanEval/903", 'def scale(xs: list, k: float) -> list:\n    """Every element of xs times k."""\n',
     "    return [x * k for x in xs]\n", [[[1.0, 2.5], 0.1], [[3.0], 1.0 / 3.0]], 1e-9),
    ("HumanEval/904", 'def first_even(xs: list):\n    """The first even number of xs, or None."""\n',
     "    for x in xs:\n        if x % 2 == 0:\n            return x\n    return None\n", [[[1, 3]], [[1, 4, 6]]], 0.0),
]


def literal_calls(test: str, name: str = "candidate") -> list[list[Any]]:
    """The argument lists of every call of ``name`` in a test whose arguments are all literals."""
    out = []
    for node in ast.walk(ast.parse(test)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name:
            try:
                args = [ast.literal_eval(a) for a in node.args]
            except ValueError:
                continue
            if not node.keywords and args not in out:
                out.append(args)
    return out


def _mutate(x: Any, rng: random.Random) -> Any:
    """A value of the same type near ``x``."""
    if isinstance(x, bool):
        return not x if rng.random() < 0.5 else x
    if isinstance(x, int):
        return rng.choice([x + 1, x - 1, x * 2, x + rng.randint(2, 20), abs(x), 0])
    if isinstance(x, float):
        return rng.choice([x * 1.5, x + 0.1, -x, x / 3.0, round(x, 1)])
    if isinstance(x, str):
        choices = [x[::-1], x + x[:1], x[1:], x.upper(), x + rng.choice("aZ 1,.")]
        return rng.choice(choices)
    if isinstance(x, list):
        y = [_mutate(v, rng) if rng.random() < 0.5 else v for v in x]
        if x and rng.random() < 0.5:
            y.append(copy.deepcopy(rng.choice(x)))
        return rng.choice([y, y[::-1], y[1:]]) if y else y
    if isinstance(x, tuple):
        return tuple(_mutate(list(x), rng)) if rng.random() < 0.3 else tuple(_mutate(v, rng) for v in x)
    if isinstance(x, dict):
        return {k: _mutate(v, rng) for k, v in x.items()}
    return x


class _Slow(Exception):
    pass


def _raise_slow(*_: Any) -> None:
    raise _Slow


def _runs(fn: Any, args: list[Any], limit_s: float) -> bool:
    """The reference accepts ``args`` (no exception, within ``limit_s``) and its output pickles."""
    import pickle

    old = signal.signal(signal.SIGALRM, _raise_slow)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        pickle.dumps(fn(*copy.deepcopy(args)))
        return True
    except (Exception, _Slow):  # noqa: BLE001 - any failure of the reference drops the input
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def plus_inputs(fn: Any, base: list[list[Any]], n: int, seed: int, limit_s: float = 0.1,
                budget_s: float = 1.0) -> list[list[Any]]:
    """Up to ``n`` new argument lists mutated from ``base`` that ``fn`` accepts."""
    rng = random.Random(seed)
    seen = {repr(b) for b in base}
    out: list[list[Any]] = []
    end = time.monotonic() + budget_s
    for _ in range(n * 20):
        if len(out) >= n or not base or time.monotonic() > end:
            break
        args = [_mutate(a, rng) for a in rng.choice(base)]
        key = repr(args)
        if key not in seen and _runs(fn, args, limit_s):
            seen.add(key)
            out.append(args)
    return out


def _reference(prompt: str, solution: str, entry_point: str) -> Any:
    g: dict[str, Any] = {}
    exec(prompt + solution, g)  # noqa: S102 - canonical solutions of the benchmark, trusted
    return g[entry_point]


def humaneval_plus_records(problems: list[Problem], *, n_plus: int = 8, seed: int = 0,
                           extra: bool = True) -> Iterator[dict[str, Any]]:
    """evalplus-format records (HumanEval+ layout) for ``problems`` with literal test inputs,
    then the tasks written here (``extra``)."""
    rows = [(p.task_id, p.prompt, p.canonical_solution, p.entry_point, literal_calls(p.test), 0.0)
            for p in problems]
    if extra:
        rows += [(tid, pr, sol, pr.split("def ", 1)[1].split("(")[0], base, atol)
                 for tid, pr, sol, base, atol in EXTRA_TASKS]
    for i, (task_id, prompt, solution, entry, base, atol) in enumerate(rows):
        fn = _reference(prompt, solution, entry)
        base = [b for b in base if _runs(fn, b, 2.0)]
        if not base:
            continue
        plus = plus_inputs(fn, base, n_plus, seed + i) if "sleep" not in solution else [[7]]
        yield {"task_id": task_id, "prompt": prompt, "entry_point": entry, "canonical_solution": solution,
               "contract": "", "base_input": base, "plus_input": plus, "atol": atol}


# MBPP tasks whose evalplus handling is special: deserialised inputs (tuples, complex), set and
# special oracles (similar_elements, find_char_long, surface_Area, digit_distance_nums, sum_div, ...)
MBPP_SPECIAL = (2, 7, 18, 63, 106, 124, 164, 250, 295, 558, 580, 581)


def mbpp_plus_records(mbpp_problems: list[Problem], *, n_plus: int = 6, seed: int = 0) -> Iterator[dict[str, Any]]:
    """evalplus-format records (MBPP+ layout: the prompt is a docstring with one assert; inputs as
    JSON, deserialised per task id when read)."""
    from engine.data.evalplus import mbpp_deserialize_inputs
    from engine.data.mbpp import tests_of

    for i, p in enumerate(mbpp_problems):
        asserts = tests_of(p)["asserts"]
        base = literal_calls("\n".join(asserts), p.entry_point)
        base = [json.loads(json.dumps(b, default=str)) for b in base]  # the JSON form the release stores
        if not base:
            continue
        prompt = f'"""\n{p.text}\n{asserts[0]}\n"""\n'
        fn = _reference("", p.canonical_solution.replace("\r\n", "\n"), p.entry_point)
        try:
            live = mbpp_deserialize_inputs(p.task_id, base)
        except (TypeError, ValueError, KeyError, IndexError):
            continue  # MBPP+ reshaped this task's inputs
        if not all(_runs(fn, b, 2.0) for b in live):
            continue
        plus = []
        for args in plus_inputs(fn, live, n_plus, seed + i):
            stored = json.loads(json.dumps(args, default=str))
            if mbpp_deserialize_inputs(p.task_id, [stored]) == [args]:
                plus.append(stored)
        yield {"task_id": p.task_id, "prompt": prompt, "entry_point": p.entry_point,
               "canonical_solution": p.canonical_solution.replace("\r\n", "\n"), "contract": "",
               "base_input": base, "plus_input": plus, "atol": 0.0, "assertion": "\n".join(asserts)}



def write_jsonl(path: Path, rows: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> Path:
    """Write records one JSON object a line (evalplus's layout)."""
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Path(path)


def write_demo_files(out_dir: Path, mbpp_file: Path) -> list[Path]:
    """The demo's HumanEval+/MBPP+-format files (HumanEval 0-15, MBPP 11-30), deterministic."""
    from engine.data import humaneval, mbpp

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"HumanEvalPlus-demo.jsonl": humaneval_plus_records(humaneval.load()[0][:16], extra=False),
             "MbppPlus-demo.jsonl": mbpp_plus_records(mbpp.problems_of(mbpp_file, 11, 30))}
    return [write_jsonl(out_dir / name, rows) for name, rows in files.items()]


if __name__ == "__main__":
    import sys

    for path in write_demo_files(Path(sys.argv[1]), Path(sys.argv[2])):
        print(path)
