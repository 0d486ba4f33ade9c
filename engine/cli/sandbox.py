"""`pmat sandbox PROGRAM.py`: run one program exactly as the harness would; print its verdict JSON.

The program runs confined. Its tests are untrusted too, so they never run as written: pmat
reads them as data in a literal shape and runs its own rendering of them on the trusted side
(``engine/sandbox/literal.py``): asserts over calls of the program's functions, literals,
comparisons and a few builtins; loops over literals are unrolled. They are found at top level,
under ``if __name__ == "__main__":``, in ``check(...)`` (called, or with ``--entry-point``), in
``test*`` functions and in any function that asserts and is called at top level or under that
guard. A test in another shape is refused with its line (status ``error``, ``UnsupportedTest``),
never run; so is a file with no tests.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.sandbox.literal import Unsupported, split
from engine.sandbox.pool import Job, Limits, SandboxPool, Verdict

HELP = __doc__.split("\n\n", 1)[1]


def _run(args: argparse.Namespace) -> int:
    from engine.cli.main import BadInput

    path = Path(args.program)
    if not path.is_file():
        raise BadInput(f"program file {path} not found")
    tests_text = None
    if args.tests:
        tests_path = Path(args.tests)
        if not tests_path.is_file():
            raise BadInput(f"tests file {tests_path} not found")
        tests_text = tests_path.read_text(errors="replace")
    try:
        program, tests, aliases = split(path.read_text(errors="replace"), tests_text, args.entry_point)
    except Unsupported as exc:
        where = args.tests or args.program
        print(json.dumps(Verdict("error", "UnsupportedTest", f"{where}: {exc}").to_dict(), indent=2))
        return 1
    limits = Limits(memory_mb=args.memory_mb, cpu_s=int(args.timeout) + 2)
    try:
        pool = SandboxPool(workers=1, limits=limits)
    except (RuntimeError, OSError) as exc:  # the self-check refused, or no template could start
        raise BadInput(f"sandbox cannot run programs here: {exc}") from None
    with pool:
        verdict = pool.run(Job(program=program, runner_code=tests, aliases=aliases, timeout=args.timeout))
        out = {**verdict.to_dict(), "network": pool.network, "filesystem": pool.filesystem}
    print(json.dumps(out, indent=2))
    return 0 if verdict.passed else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sandbox", help="run one program in the evaluation sandbox, print its verdict",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("program", help="Python file: code plus its tests (asserts, check(), test_*, a __main__ block)")
    p.add_argument("--tests", help="a separate test file, read in the same literal shape")
    p.add_argument("--entry-point", help="call the tests' check() with this function of the program")
    p.add_argument("--timeout", type=float, default=10.0, help="wall-clock limit in seconds (default 10)")
    p.add_argument("--memory-mb", type=int, default=2048, help="address-space limit (default 2048)")
    p.set_defaults(func=_run)
