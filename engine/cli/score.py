"""`pmat score --protocol ID --samples FILE [--data FILE | --unpinned]`: score samples from anywhere.

The samples file is evalplus's (one JSON object a line: ``task_id`` with ``solution`` or
``completion``; several per task). Scoring is the eval stage's own path
(``engine.data.scoring``); the output JSON holds per-task, per-sample verdicts (base and
plus) in evalplus's words, pass@k, and the effective protocol with its digest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli._common import BadInput
from engine.data import protocols, scoring
from engine.data.humaneval import default_path
from engine.sandbox.pool import SandboxPool
from engine.workspace import atomic_write_json


def _data_path(args: argparse.Namespace) -> Path:
    if args.data:
        return args.data
    if protocols.get(args.protocol).dataset == "humaneval":
        return default_path()
    raise BadInput(f"--data FILE is required for protocol {args.protocol} "
                   f"(pmat data fetch {protocols.get(args.protocol).dataset})")


def cmd_score(args: argparse.Namespace) -> int:
    try:
        protocols.get(args.protocol)
        bench = scoring.open_benchmark(args.protocol, _data_path(args), unpinned=args.unpinned,
                                       data_sha256=args.sha256)
        samples = scoring.read_samples(args.samples)
    except (ValueError, FileNotFoundError) as exc:
        raise BadInput(str(exc)) from None
    tasks = bench.by_id()
    unknown = sorted({s["task_id"] for s in samples} - set(tasks))
    for task_id in unknown:  # evalplus warns and skips them too
        print(f"warning: {args.samples}: task {task_id} is not in {bench.path}; skipped", file=sys.stderr)
    pairs = [(s["task_id"], scoring.solution_of(tasks[s["task_id"]], s)) for s in samples if s["task_id"] in tasks]
    with SandboxPool(workers=args.workers, limits=scoring.pool_limits(bench.protocol, args.memory_mb)) as pool:
        verdicts = scoring.score(bench, pairs, pool)
    per_task: dict[str, list[dict]] = {}
    for (_, solution), v in zip(pairs, verdicts, strict=True):
        per_task.setdefault(v["task_id"], []).append({**v, "solution": solution})
        isolation = pool.isolation()
    report = scoring.report(bench, per_task, sandbox=isolation)
    out = args.out or args.samples.with_name(args.samples.name.split(".")[0] + "_pmat_results.json")
    atomic_write_json(out, report)
    p = bench.protocol
    pinned = "pinned by the project" if p.data_pinned_by == "project" else "NOT the pinned release (unpinned)"
    print(f"protocol {p.id} v{p.version} digest {bench.protocol.digest()[:16]}")
    print(f"data {bench.path} sha256 {bench.sha256} ({pinned})")
    print(f"scored {len(pairs)} samples of {len(per_task)} tasks; {len(report['missing_tasks'])} tasks without samples")
    for name, value in report["metrics"].items():
        print(f"{name}\t{value:.4f}")
    print(f"verdicts: {out}")
    return 0


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("score", help="score an evalplus-format samples file under a protocol")
    p.add_argument("--protocol", required=True, help=f"protocol id ({', '.join(protocols.PROTOCOLS)})")
    p.add_argument("--samples", required=True, type=Path,
                   help="JSONL (or .jsonl.gz): task_id with solution or completion; or evalplus's sample directory")
    p.add_argument("--data", type=Path, help="the protocol's data file (checked against its sha256 pin)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--unpinned", action="store_true", help="accept a data file that is not the pinned one")
    group.add_argument("--sha256", help="accept the data file only with this sha256 (a pin of your own)")
    p.add_argument("--out", type=Path, help="verdicts JSON (default: SAMPLES_pmat_results.json)")
    p.add_argument("--workers", type=int, default=None, help="sandbox processes (default: 2 per core)")
    p.add_argument("--memory-mb", type=int, default=4096, help="address space per program (evalplus: 4 GiB)")
    p.set_defaults(func=cmd_score)
