"""`pmat` entry point: every module in engine/cli/ contributes subcommands.

Exit codes: 0 ok, 1 failed, 2 bad input (with a one-line error).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import engine.cli as cli_pkg
from engine.cli._common import BadInput


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pmat", description="pmat: pipeline console and engine")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda i: i.name):
        if info.name in ("main",) or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"engine.cli.{info.name}")
        module.register(subs)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        argv = ["tui"] if "tui" in parser._subparsers._group_actions[0].choices else ["--help"]  # noqa: SLF001
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BadInput as exc:
        print(f"pmat: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
