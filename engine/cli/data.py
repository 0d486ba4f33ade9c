"""`pmat data fetch|list`: the official benchmark files, downloaded and verified against their pins."""

from __future__ import annotations

import argparse
import sys

from engine.cli._common import BadInput, add_workspace_arg, workspace_of
from engine.data.fetch import FetchError, NotFetched, fetch, recorded
from engine.data.pins import DATASETS


def cmd_fetch(args: argparse.Namespace) -> int:
    ws = workspace_of(args, must_exist=False)
    names = list(DATASETS) if args.names == ["all"] else args.names
    if len(names) > 1 and (args.url or args.sha256):
        raise BadInput("--url and --sha256 apply to one dataset: name one")
    failed = 0
    for name in names:
        try:
            rec = fetch(ws.root, name, args.url, sha256=args.sha256, timeout=args.timeout)
        except FetchError as exc:
            print(f"pmat: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: {ws.root / rec['path']} sha256 {rec['sha256']} (pinned by {rec['pinned_by']}, from {rec['url']})")
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    ws = workspace_of(args, must_exist=False)
    for pin in DATASETS.values():
        try:
            state = f"fetched {recorded(ws.root, pin.id).path}"
        except NotFetched:
            state = "not fetched"
        except FetchError as exc:
            state = f"BAD: {exc}"
        print(f"{pin.id:<15} sha256 {pin.sha256 or 'UNPINNED':<64}  {pin.version}  {state}")
    return 0


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("data", help="fetch and verify the official benchmark data files")
    dsubs = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    f = dsubs.add_parser("fetch", help="download NAME, verify its sha256 pin, record it in the workspace")
    f.add_argument("names", nargs="+", choices=[*DATASETS, "all"], metavar="NAME",
                   help=f"one or more of {', '.join(DATASETS)}, or all")
    f.add_argument("--url", default=None, help="download from this URL instead (a mirror); the pin still applies")
    f.add_argument("--sha256", default=None, help="pin the file yourself (recorded as pinned by the user)")
    f.add_argument("--timeout", type=float, default=60.0, help="seconds without data before giving up")
    add_workspace_arg(f)
    f.set_defaults(func=cmd_fetch)
    ls = dsubs.add_parser("list", help="the pinned datasets and what this workspace has fetched")
    add_workspace_arg(ls)
    ls.set_defaults(func=cmd_list)

