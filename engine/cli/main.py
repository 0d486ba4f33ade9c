"""`pmat` entry point: every module in engine/cli/ contributes subcommands.

Exit codes: 0 done as asked; 1 failed while doing it; 2 refused, nothing changed (bad input,
an unknown name, a command the supervisor rejected, an action with nothing to do), with a
one-line error (a JSON object on stdout under ``--json``).

A command imports only the module that defines it (found by reading each module's source,
not by importing it): ``pmat status`` must not pay for the stages' torch imports.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import json
import os
import pkgutil
import sys
from pathlib import Path

import engine.cli as cli_pkg
from engine.cli._common import BadInput


def declared_commands(path: Path) -> set[str] | None:
    """The subcommands a module registers, read from its source: its ``COMMANDS`` tuple, else
    the literal names passed to ``add_parser``; None when that cannot be told without running it."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "COMMANDS" for t in node.targets):
            try:
                return set(ast.literal_eval(node.value))
            except ValueError:
                return None
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_parser":
            first = node.args[0] if node.args else None
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                return None
            names.add(first.value)
    return names or None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only the modules that may define it are imported."""
    parser = argparse.ArgumentParser(prog="pmat", description="pmat: pipeline console and engine")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = [i for i in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda i: i.name)
               if i.name != "main" and not i.name.startswith("_")]
    if command is not None:
        known = {i.name: declared_commands(Path(cli_pkg.__path__[0]) / f"{i.name}.py") for i in modules}
        if any(names and command in names for names in known.values()):
            modules = [i for i in modules if known[i.name] is None or command in known[i.name]]
    for info in modules:
        importlib.import_module(f"engine.cli.{info.name}").register(subs)
    return parser


def _error(args: argparse.Namespace | None, message: str, code: int) -> int:
    """One line on stderr, or a JSON object on stdout when the command was asked for JSON."""
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "exit": code}))
    else:
        print(f"pmat: error: {message}", file=sys.stderr)
    return code


def os_error_line(exc: OSError) -> str:
    """``PATH: Permission denied`` (both paths of a rename); the class name when there is no errno."""
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    why = exc.strerror or f"{type(exc).__name__}: {exc}"
    return f"{paths}: {why}" if paths else why


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first = next((a for a in argv if not a.startswith("-")), None) if argv else "tui"
    parser = build_parser(first)
    if not argv:
        argv = ["tui"] if "tui" in parser._subparsers._group_actions[0].choices else ["--help"]  # noqa: SLF001
        first = argv[0]
    args = None
    choices = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    if first is not None and first not in choices and argv and argv[0] == first:
        close = difflib.get_close_matches(first, list(choices), n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(close)}?)" if close else f"; commands: {', '.join(sorted(choices))}"
        return _error(None, f"unknown command {first!r}{hint}", 2)
    try:
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except BadInput as exc:
        return _error(args, str(exc), 2)
    except BrokenPipeError:  # `pmat logs X | head`: the reader left; end quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # a read-only workspace, a permission, a full disk: one line naming the path
        return _error(args, os_error_line(exc), 2)
    except Exception as exc:
        if getattr(args, "json", False):
            return _error(args, f"{type(exc).__name__}: {exc}", 1)
        raise


if __name__ == "__main__":
    sys.exit(main())
