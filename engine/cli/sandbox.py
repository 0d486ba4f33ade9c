"""`pmat sandbox PROGRAM.py`: run one program exactly as the harness would; print its verdict JSON.

The program's top-level ``assert`` statements, a ``def check(...)`` and calls of ``check``
are the tests: they run on the trusted side; everything else runs confined. ``--tests``
names a separate test file instead (``--entry-point`` then calls its ``check`` with that
function, as HumanEval does).
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

from engine.data.humaneval import CANDIDATE
from engine.sandbox.pool import Job, Limits, SandboxPool


def split_program(source: str) -> tuple[str, str]:
    """(program, tests): top-level asserts and ``check`` definitions/calls are the tests."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source, ""  # the sandbox reports the syntax error as the harness would
    lines = source.splitlines(keepends=True)
    program, tests = [], []
    for node in tree.body:
        is_test = isinstance(node, ast.Assert) or (
            isinstance(node, ast.FunctionDef) and node.name == "check") or (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name) and node.value.func.id == "check")
        start = node.lineno - 1 - len(getattr(node, "decorator_list", []))
        chunk = "".join(lines[start:node.end_lineno])
        (tests if is_test else program).append(chunk)
    return "".join(program), "".join(tests)


def _run(args: argparse.Namespace) -> int:
    from engine.cli.main import BadInput

    path = Path(args.program)
    if not path.is_file():
        raise BadInput(f"program file {path} not found")
    source = path.read_text()
    aliases: dict[str, str] = {}
    if args.tests:
        tests_path = Path(args.tests)
        if not tests_path.is_file():
            raise BadInput(f"tests file {tests_path} not found")
        program, tests = source, tests_path.read_text()
        if args.entry_point:
            tests += f"\ncheck({CANDIDATE})\n"
            aliases = {CANDIDATE: args.entry_point}
    else:
        program, tests = split_program(source)
    limits = Limits(memory_mb=args.memory_mb, cpu_s=int(args.timeout) + 2)
    with SandboxPool(workers=1, limits=limits) as pool:
        verdict = pool.run(Job(program=program, runner_code=tests, aliases=aliases, timeout=args.timeout))
        out = {**verdict.to_dict(), "network": pool.network, "filesystem": pool.filesystem}
    print(json.dumps(out, indent=2))
    return 0 if verdict.passed else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sandbox", help="run one program in the evaluation sandbox, print its verdict")
    p.add_argument("program", help="Python file: code plus its asserts (or a check function)")
    p.add_argument("--tests", help="a separate test file (asserts, or a HumanEval check function)")
    p.add_argument("--entry-point", help="with --tests: call check() with this function")
    p.add_argument("--timeout", type=float, default=10.0, help="wall-clock limit in seconds (default 10)")
    p.add_argument("--memory-mb", type=int, default=2048, help="address-space limit (default 2048)")
    p.set_defaults(func=_run)
