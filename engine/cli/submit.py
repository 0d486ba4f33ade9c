"""`pmat submit`: validate the final bundle; upload it only when told to, with a token."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from engine.bundle import validate_bundle
from engine.cli._common import BadInput, add_workspace_arg, spec_of, workspace_of
from engine.gates import evaluate_gates


def cmd_submit(args: argparse.Namespace) -> int:
    ws = workspace_of(args)
    spec = spec_of(ws)
    bundle = args.bundle or ws.artifact_path("submit", "bundle")
    if not bundle.exists():
        raise BadInput(f"{bundle}: no bundle (run the submit stage first, or pass --bundle DIR)")
    problems = validate_bundle(bundle)
    for p in problems:
        print(f"INVALID {p}")
    gates = evaluate_gates(spec, ws)
    failing = {k: g for k, g in gates.items() if g.outcome != "pass"}
    for k, g in gates.items():
        print(f"{g.outcome.upper():<8} {k}: {g.reason}")
    if problems:
        return 1
    print(f"bundle {bundle}: complete, every checksum matches")
    if args.dry_run or not args.upload:
        return 0
    if failing and not args.force:
        print(f"not uploading: {len(failing)} gate(s) do not pass ({', '.join(failing)}); --force overrides")
        return 1
    token = args.token or os.environ.get("HF_TOKEN")
    if not token:
        raise BadInput("--upload needs --token or HF_TOKEN")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(args.upload, exist_ok=True, private=True)
    api.upload_folder(folder_path=str(bundle), repo_id=args.upload)
    print(f"uploaded {bundle} to {args.upload}")
    return 0


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("submit", help="validate the submission bundle (and upload it with --upload REPO)")
    p.add_argument("--dry-run", action="store_true", help="validate only (the default unless --upload is given)")
    p.add_argument("--bundle", type=Path, default=None)
    p.add_argument("--upload", metavar="REPO_ID", default=None)
    p.add_argument("--token", default=None)
    p.add_argument("--force", action="store_true", help="upload even when gates do not pass")
    add_workspace_arg(p)
    p.set_defaults(func=cmd_submit)
