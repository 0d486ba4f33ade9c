"""MBPP from a configured directory, verified by sha256, with the standard task_id splits.

The program runs as MBPP's references need it: the code, then ``test_setup_code``
(tasks 367 and 927 build trees from the code's own class), then the asserts.
"""

from __future__ import annotations

import ast
import builtins
import json
from pathlib import Path

from engine.data.humaneval import Problem
from engine.sandbox.pool import Job
from engine.workspace import sha256_file

FILES = {
    "full": ("mbpp.jsonl", "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f"),
    "sanitized": ("sanitized-mbpp.json", "ca95deaa9a01ef0a6f439f88bcf0dd3db3563d22f22aad6cae04ebb9a8d8c8e9"),
}
# the copy the package ships (CC BY 4.0), which the demo and the tests read
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "pipelines" / "data" / "mbpp"
EVAL_SPLITS = {"test", "prompt"}  # the benchmark split and its few-shot examples: training refuses them
SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974), "all": (1, 974)}
OBTAIN = ("download it from https://github.com/google-research/google-research/tree/master/mbpp "
          "(CC BY 4.0) into that directory")


def verified_file(data_dir: Path, variant: str = "full") -> tuple[Path, str]:
    """The data file of ``variant`` under ``data_dir`` and its sha256, or a one-line error."""
    if variant not in FILES:
        raise ValueError(f"unknown MBPP variant {variant!r} (expected one of {', '.join(FILES)})")
    name, expected = FILES[variant]
    path = (Path(data_dir).parent if Path(data_dir).is_file() else Path(data_dir)) / name  # dir, or its mbpp.jsonl
    if not path.is_file():
        raise FileNotFoundError(f"MBPP file {path} is missing (expected sha256 {expected}); {OBTAIN}")
    digest = sha256_file(path)
    if digest != expected:
        raise ValueError(f"MBPP file {path} has sha256 {digest}, expected {expected}: altered or wrong "
                         f"revision; {OBTAIN}")
    return path, digest


def entry_point(asserts: list[str]) -> str:
    """The function the asserts call (the name MBPP prompts must state): the first called name
    that is not a builtin (``int(lobb_num(5, 3))``), else the first called name (``sum(...)``)."""
    called = [n.func.id for n in ast.walk(ast.parse(asserts[0].strip()))
              if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    own = [c for c in called if not hasattr(builtins, c)]
    return (own or called or [""])[0]


def load(data_dir: Path, split: str = "test", variant: str = "full") -> tuple[list[Problem], str]:
    """Problems of one split (by task_id) and the sha256 of the file."""
    if split not in SPLITS:
        raise ValueError(f"unknown MBPP split {split!r} (expected one of {', '.join(SPLITS)})")
    path, digest = verified_file(data_dir, variant)
    return problems_of(path, *SPLITS[split]), digest


def problems_of(path: Path, lo: int, hi: int) -> list[Problem]:
    """The problems of an MBPP file (``mbpp.jsonl``, or the sanitized ``.json``) with lo <= task_id <= hi."""
    text = Path(path).read_text()
    try:
        rows = json.loads(text) if Path(path).suffix == ".json" else [json.loads(x) for x in text.splitlines() if x]
    except ValueError as exc:
        raise ValueError(f"{path}: not an MBPP file ({exc})") from None
    problems = []
    for r in rows:
        if not lo <= int(r["task_id"]) <= hi:
            continue
        setup = r.get("test_setup_code", "")
        imports = "\n".join(r.get("test_imports", []))
        problems.append(Problem(
            task_id=f"Mbpp/{r['task_id']}",
            prompt=r.get("text") or r.get("prompt", ""),
            entry_point=entry_point(r["test_list"]),
            test=json.dumps({"setup": setup, "imports": imports, "asserts": r["test_list"]}),
            canonical_solution=r["code"],
            text=r.get("text") or r.get("prompt", ""),
        ))
    return problems


def tests_of(problem: Problem) -> dict:
    return json.loads(problem.test)


def make_job(problem: Problem, completion: str, timeout: float = 10.0) -> Job:
    """Program = imports + completion, then setup, in the sandbox; asserts on the trusted side."""
    t = tests_of(problem)
    program = (t["imports"] + "\n" if t["imports"] else "") + completion + "\n"
    runner_code = (t["imports"] + "\n" if t["imports"] else "") + "\n".join(t["asserts"]) + "\n"
    # a task whose function shadows a builtin (task 126 defines `sum`) must test the program's one
    shadowed = {problem.entry_point: problem.entry_point} if hasattr(builtins, problem.entry_point) else {}
    return Job(program=program, runner_code=runner_code, setup=t["setup"], aliases=shadowed, timeout=timeout)
