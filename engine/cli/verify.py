"""`pmat verify [--accept]`: check the hash chains of the results ledger and the journal.

A broken chain (a line edited, inserted or removed by hand) is reported with its line;
nothing after it counts (results, approvals) until the user, having looked, accepts the
files as they are now with ``--accept``; later appends chain on from there.
"""

from __future__ import annotations

import argparse

from engine.chain import accept_break, verify_chain
from engine.cli._common import add_workspace_arg, workspace_of


def cmd_verify(args: argparse.Namespace) -> int:
    ws = workspace_of(args)
    broken = 0
    for what, path in (("results ledger", ws.ledger_path), ("supervisor journal", ws.journal_path)):
        report = verify_chain(path)
        if report.ok:
            print(f"OK       {what}: {len(report.records)} line(s) chained ({path})")
        elif args.accept:
            after = accept_break(path)
            print(f"ACCEPTED {what}: {report.reason}; {len(after.records)} line(s) count from now on")
        else:
            broken += 1
            print(f"BROKEN   {what}: {report.reason}; {len(report.records)} line(s) before it count, "
                  "nothing after it (`pmat verify --accept` once checked)")
    return 1 if broken else 0


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("verify", help="check the ledger's and the journal's hash chains (--accept a checked break)")
    p.add_argument("--accept", action="store_true", help="accept the files as they are now (after checking them)")
    add_workspace_arg(p)
    p.set_defaults(func=cmd_verify)
