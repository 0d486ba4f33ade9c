"""HumanEval+ / MBPP+ in evalplus's JSONL format, from a path the user configures.

Each record carries ``task_id``, ``prompt``, ``entry_point``, ``canonical_solution``,
``base_input`` and ``plus_input`` (lists of argument lists) and optionally ``atol``.
Expected outputs are computed on the trusted side by the canonical solution, as evalplus
does; the program's outputs come back over the sandbox's socket as plain values.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from engine.data.humaneval import CANDIDATE, Problem
from engine.sandbox.pool import Job
from engine.workspace import sha256_file

OBTAIN = {
    "humaneval_plus": "HumanEvalPlus.jsonl.gz from https://github.com/evalplus/humanevalplus_release/releases",
    "mbpp_plus": "MbppPlus.jsonl.gz from https://github.com/evalplus/mbppplus_release/releases",
}
REQUIRED = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input")

_CHECKER = '''
import copy as __copy, json as __json

def __is_floats(x):
    return isinstance(x, float) or (isinstance(x, (list, tuple)) and len(x) > 0
                                    and all(isinstance(i, float) for i in x))

def __close(got, exp, atol):
    # evalplus: exact equality, else numpy.allclose(got, exp, rtol=1e-07, atol=atol) for floats
    if got == exp:
        return True
    if not __is_floats(exp):
        return False
    g = list(got) if isinstance(got, (list, tuple)) else [got]
    e = list(exp) if isinstance(exp, (list, tuple)) else [exp]
    try:
        return len(g) == len(e) and all(abs(a - b) <= atol + 1e-07 * abs(b) for a, b in zip(g, e))
    except TypeError:
        return False

for __args in __json.loads(__INPUTS):
    __got = __CAND(*__copy.deepcopy(__args))
    if __NAME == "find_zero":  # any root will do, as in evalplus
        assert abs(poly(*__args, __got)) <= max(__ATOL, 1e-6), f"input {str(__args)[:200]}: not a root"
        continue
    __exp = __REF(*__copy.deepcopy(__args))
    assert __close(__got, __exp, __ATOL), f"input {str(__args)[:200]}: got {str(__got)[:200]}"
'''


def load(path: Path, benchmark: str, expected_sha256: str | None = None) -> tuple[list[Problem], str]:
    """Problems of an evalplus file and its sha256 (checked against ``expected_sha256`` if given)."""
    path = Path(path)
    how = OBTAIN.get(benchmark, "the evalplus release files")
    if not path.is_file():
        raise FileNotFoundError(f"{benchmark} file {path} not found (expected sha256 "
                                f"{expected_sha256 or 'of the release you configure'}); download {how}")
    digest = sha256_file(path)
    if expected_sha256 and digest != expected_sha256:
        raise ValueError(f"{benchmark} file {path} has sha256 {digest}, expected {expected_sha256}; "
                         f"download {how} again")
    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    with opener(path, "rt") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            r = json.loads(line)
            missing = [k for k in REQUIRED if k not in r]
            if missing:
                raise ValueError(f"{path}:{lineno}: record lacks {', '.join(missing)} (not evalplus format)")
            inputs = json.dumps({"inputs": r["base_input"] + r["plus_input"], "atol": float(r.get("atol") or 0)})
            problems.append(Problem(str(r["task_id"]), r["prompt"], r["entry_point"], inputs,
                                    r["canonical_solution"], text=r["prompt"]))
    return problems, digest


def make_job(problem: Problem, completion: str, timeout: float = 20.0, *, body: bool = True) -> Job:
    """Program = prompt + completion (HumanEval+ style) or the completion alone (MBPP+)."""
    spec = json.loads(problem.test)
    reference = problem.prompt + problem.canonical_solution if body else problem.canonical_solution
    runner_code = (f"{reference}\n\n__REF = {problem.entry_point}\n__CAND = {CANDIDATE}\n"
                   f"__INPUTS = {json.dumps(json.dumps(spec['inputs']))}\n__ATOL = {spec['atol']!r}\n"
                   f"__NAME = {problem.entry_point!r}\n{_CHECKER}")
    program = (problem.prompt if body else "") + completion + "\n"
    return Job(program=program, runner_code=runner_code, aliases={CANDIDATE: problem.entry_point},
               timeout=timeout)
