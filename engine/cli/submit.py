"""`pmat submit`: validate the final bundle; upload it only when told to, with a token.

An upload is refused when the stage that built the bundle was revoked (its approval
lapsed: inputs or verdicts changed since) and, unless ``--override REASON`` is given
and printed, when its gates do not pass now (checkpoints re-hashed in full).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from engine.approvals import gated_criteria, revoked
from engine.bundle import validate_bundle
from engine.cli._common import BadInput, add_workspace_arg, spec_of, workspace_of
from engine.content_id import CorruptArtifact, HashCache, artifact_hash
from engine.gates import evaluate_gates
from engine.state import load_state


def cmd_submit(args: argparse.Namespace) -> int:
    ws = workspace_of(args)
    spec = spec_of(ws)
    stage = args.stage
    if stage not in spec.stages:
        raise BadInput(f"--stage {stage!r}: no such stage in {ws.spec_path}")
    bundle = args.bundle or ws.artifact_path(stage, "bundle")
    if not bundle.exists():
        raise BadInput(f"{bundle}: no bundle (run the {stage} stage first, or pass --bundle DIR)")
    problems = validate_bundle(bundle)
    if args.bundle is None:
        try:
            artifact_hash(ws, stage, "bundle", HashCache(ws, full=True))
        except CorruptArtifact as exc:
            problems.append(str(exc))
    for p in problems:
        print(f"INVALID {p}")
    gates = evaluate_gates(spec, ws, full_hash=True, persist_cache=True)
    mine = gated_criteria(spec, stage) or list(gates)
    for k in mine:
        print(f"{gates[k].outcome.upper():<8} {k}: {gates[k].reason}")
    lapsed = revoked(spec, ws, stage, load_state(ws).approvals.get(stage))
    if lapsed:
        print(f"REVOKED  {lapsed}; its bundle is not offered for upload")
    if problems:
        return 1
    print(f"bundle {bundle}: complete, every checksum matches")
    if args.dry_run or not args.upload:
        return 1 if lapsed else 0
    if lapsed:
        print("not uploading: the bundle's approval lapsed (approve again and re-run the stage)")
        return 1
    failing = [k for k in mine if gates[k].outcome != "pass"]
    override = (args.override or "").strip()
    if failing and not override:
        print(f"not uploading: {len(failing)} gate(s) do not pass now ({', '.join(failing)}); "
              "--override REASON uploads anyway, saying so")
        return 1
    if failing:
        print(f"OVERRIDE uploading although {', '.join(f'{k} is {gates[k].outcome.upper()}' for k in failing)}: {override}")
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
    p.add_argument("--stage", default="submit", help="the stage that builds the bundle (default: submit)")
    p.add_argument("--upload", metavar="REPO_ID", default=None)
    p.add_argument("--token", default=None)
    p.add_argument("--override", metavar="REASON", default=None,
                   help="upload although gates do not pass now, saying why (printed)")
    add_workspace_arg(p)
    p.set_defaults(func=cmd_submit)
