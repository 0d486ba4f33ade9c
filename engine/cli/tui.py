"""`pmat tui [--workspace DIR] [--readonly]`: open the console (plain `pmat` does too).

Starts the workspace's supervisor detached when none runs (never in read-only mode),
so that commands given in the console are carried out; the console itself owns no job
and leaves every job running when it exits.
"""

from __future__ import annotations

import argparse

from engine.cli._common import BadInput, add_workspace_arg, workspace_of
from engine.inbox import start_supervisor_detached, supervisor_identity
from engine.procs import logind_kills_user_processes
from engine.spec import SpecError


def cmd_tui(args: argparse.Namespace) -> int:
    ws = workspace_of(args)
    from engine.overview import load_spec_fast  # loaded only for the console

    try:
        spec = load_spec_fast(ws.spec_path, check_params=False)  # parameters: checked in the background
    except SpecError as exc:
        raise BadInput(str(exc)) from None
    notices = [args.notice] if getattr(args, "notice", None) else []
    if not args.readonly and supervisor_identity(ws) is None:
        ident = start_supervisor_detached(ws.init())
        notices.append(f"Started the supervisor (pid {ident.pid}); it keeps running after the console closes.")
    warn = logind_kills_user_processes()
    if warn:
        notices.append(warn)
    from pmat_tui.app import PmatApp

    app = PmatApp(ws, spec, readonly=args.readonly, notice=" ".join(notices) or None)
    app.run()
    return app.return_code or 0


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("tui", help="open the console (the default command)")
    p.add_argument("--readonly", action="store_true", help="show everything, change nothing")
    add_workspace_arg(p)
    p.set_defaults(func=cmd_tui)
