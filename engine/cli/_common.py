"""Helpers shared by CLI commands: finding the workspace and its spec, one-line user errors."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from engine.spec import PipelineSpec, SpecError, load_spec
from engine.workspace import UnsafeWorkspace, Workspace


class BadInput(Exception):
    """A user error: printed as one line, exit code 2."""


def add_workspace_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", "-w", type=Path, default=None,
                   help="workspace directory (default: $PMAT_WORKSPACE or the current directory)")


def workspace_of(args: argparse.Namespace, *, must_exist: bool = True) -> Workspace:
    root = args.workspace or Path(os.environ.get("PMAT_WORKSPACE") or Path.cwd())
    ws = Workspace(root)
    if must_exist and not ws.spec_path.exists():
        raise BadInput(f"{ws.spec_path}: no pipeline spec here (pmat init DIR, or --workspace DIR)")
    try:
        ws.check_safe()
    except UnsafeWorkspace as exc:
        raise BadInput(str(exc)) from None
    return ws


def spec_of(ws: Workspace) -> PipelineSpec:
    try:
        return load_spec(ws.spec_path)
    except SpecError as exc:
        raise BadInput(str(exc)) from None
