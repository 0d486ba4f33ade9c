"""`pmat contracts [check|verify]`: list contracts, resolve their bindings, run them."""

from __future__ import annotations

import argparse

from engine.cli._common import BadInput
from engine.contracts import ContractError, check_bindings, load_contracts, verify


def cmd_contracts(args: argparse.Namespace) -> int:
    try:
        contracts = load_contracts()
    except ContractError as exc:
        raise BadInput(str(exc)) from None
    rep = check_bindings(contracts)
    for c in contracts:
        print(f"{c.id:<28} {len(c.obligations):>2} obligations  {c.title}")
    print(f"binding coverage: {rep.bound}/{rep.obligations} obligations bound to existing tests ({rep.coverage:.0%})")
    for ob, node in rep.missing:
        print(f"  MISSING {ob}: {node}")
    for ob in rep.unbound:
        print(f"  UNBOUND {ob}: no test bound")
    if rep.missing or rep.unbound:
        return 1
    if args.action == "verify":
        verdicts = verify(contracts)
        for c in contracts:
            for ob in c.obligations:
                print(f"{verdicts[ob.id].upper():<8} {ob.id:<10} {c.id}: {ob.statement}")
        failed = [k for k, v in verdicts.items() if v != "passed"]
        print(f"{len(verdicts) - len(failed)} passed, {len(failed)} failed")
        return 1 if failed else 0
    return 0


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("contracts", help="list contracts and check (or verify: run) their bound tests")
    p.add_argument("action", nargs="?", choices=["check", "verify"], default="check")
    p.set_defaults(func=cmd_contracts)
