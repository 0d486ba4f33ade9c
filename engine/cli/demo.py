"""`pmat demo [--headless]`: the whole PMAT DAG on tiny models built on the spot.

Headless, it drives a real detached supervisor as a client would: requests every
stage, approves gated stages on the evidence it is shown (journaled as the demo's
approval), prints each stage as it moves, and ends with a summary and the gates'
honest verdicts. Without --headless it opens the console on the same workspace.

It stops waiting only when nothing can move any more: a crash the supervisor will
resume, or a stage waiting for disk space, is not the end. A supervisor that dies is
noticed at once, said in one line, and started again (a few times at most).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine.approvals import check_approvable, describe_approval
from engine.cli._common import BadInput
from engine.dag import expand_targets
from engine.data.scoring import score_lines
from engine.gates import evaluate_gates
from engine.inbox import (
    Approve,
    Run,
    send_command,
    start_supervisor_detached,
    supervisor_down,
    supervisor_identity,
)
from engine.overview import Overview, build_overview
from engine.results import read_ledger
from engine.resume import waits_for_space, will_resume
from engine.spec import PipelineSpec, load_spec, pipeline_path
from engine.state import PipelineState
from engine.supervisor import BAD_INPUT
from engine.text import fmt_duration
from engine.workspace import UnsafeWorkspace, Workspace

DEMO_APPROVER = "pmat demo --headless"
DEMO_OVERRIDE = "tiny demo models"
SUPERVISOR_RESTARTS = 3
SETTLE_S = 5.0  # nothing may move for this long before the demo calls a stage stuck


def prepare(root: Path) -> Workspace:
    """A demo workspace: created on first use, resumed as it is afterwards."""
    ws = Workspace(root).init()
    if not ws.spec_path.exists():
        ws.spec_path.write_bytes(pipeline_path("demo").read_bytes())
        ws.spec_path.chmod(0o600)
    return ws


def stuck(spec: PipelineSpec, state: PipelineState, ov: Overview, root: Path) -> bool:
    """Some stage ended for good and nothing else can move: every stage is done, failed for good,
    held for an input the user must fix, or waits on such a stage; none runs, and none ended in
    a way the supervisor takes up again by itself (a resumable crash, a full disk)."""
    ended = False
    for row in ov.rows:
        st = state.stage(row.stage)
        if will_resume(spec.stages.get(row.stage), st) or waits_for_space(st, root):
            return False
        held = row.status == "queued" and ((st.waiting or "").startswith(BAD_INPUT) or row.reason_kind == "failed_dependency")
        if row.status in ("running", "queued", "pending") and not held:
            return False
        ended |= held or row.status in ("failed", "crashed", "cancelled")
    return ended


def run_headless(ws: Workspace, timeout_s: float, approver: str = DEMO_APPROVER, override: str = DEMO_OVERRIDE,
                 targets: tuple[str, ...] = ("all",)) -> int:
    """Request ``targets`` (with their upstream), approve what they gate, wait until they are done."""
    spec = load_spec(ws.spec_path)
    wanted = expand_targets(spec, list(targets))
    if isinstance(wanted, str):
        raise BadInput(f"{ws.spec_path}: no stage or work item {wanted!r}")
    started = None
    if supervisor_identity(ws) is None:
        started = start_supervisor_detached(ws)
    restarts = 0
    send_command(ws, Run(list(targets)))
    state = PipelineState(ws)
    shown: dict[str, str] = {}
    approved: set[str] = set()
    t0 = time.monotonic()
    stuck_since: float | None = None
    said: set[tuple[float, str | None]] = set()
    try:
        while True:
            if (down := supervisor_down(ws)) and (started is None or not started.alive()):
                print(f"pmat demo: {down}", file=sys.stderr, flush=True)
                if restarts == SUPERVISOR_RESTARTS:
                    return 1
                restarts += 1
                started = start_supervisor_detached(ws)
                print(f"pmat demo: started the supervisor again (pid {started.pid}, restart {restarts} of "
                      f"{SUPERVISOR_RESTARTS})", file=sys.stderr, flush=True)
            moved = state.refresh()
            for ev in state.journal:  # what the supervisor could not do (I/O errors, damaged logs), said once
                if ev.get("kind") == "supervisor_error" and (ev["ts"], ev.get("message")) not in said:
                    said.add((ev["ts"], ev.get("message")))
                    print(f"pmat demo: supervisor: {ev.get('message')}", file=sys.stderr, flush=True)
            ov = build_overview(ws, spec, state)
            rows = [r for r in ov.rows if r.stage in wanted]
            for row in rows:
                line = row.status if row.status in ("running", "done") else f"{row.status}: {row.reason}"
                if shown.get(row.stage) != line:
                    shown[row.stage] = line
                    print(f"[{fmt_duration(time.monotonic() - t0):>6}] {row.stage:<22} {line}", flush=True)
                if row.reason_kind == "needs_approval" and row.stage not in approved:
                    evidence, refusal = check_approvable(spec, ws, row.stage)
                    if refusal:  # the tiny models fail the real gates: only a visible override gets past
                        print(f"pmat demo: {refusal}; approving with --override {override!r}", flush=True)
                    send_command(ws, Approve(row.stage, evidence, f"{approver}: approved automatically on the evidence shown",
                                             override if refusal else None))
                    approved.add(row.stage)
            if all(r.status == "done" for r in rows):
                break
            now = time.monotonic()
            stuck_since = None if moved or not stuck(spec, state, ov, ws.root) else stuck_since or now
            if stuck_since is not None and now - stuck_since >= SETTLE_S:
                break
            if now - t0 > timeout_s:
                print(f"pmat demo: stopped waiting after {fmt_duration(timeout_s)}", file=sys.stderr)
                break
            time.sleep(0.5)
    finally:
        if started is not None:
            started.terminate(grace_s=10)
    return summary(ws, spec, state, time.monotonic() - t0, wanted)


def summary(ws: Workspace, spec: PipelineSpec, state: PipelineState, wall_s: float,
            wanted: set[str] | None = None) -> int:
    rows = [r for r in build_overview(ws, spec, state).rows if wanted is None or r.stage in wanted]
    print(f"\n== pmat demo summary ({fmt_duration(wall_s)}, workspace {ws.root}) ==")
    for r in rows:
        extra = f"  ({r.error})" if r.error and r.status != "done" else ""
        print(f"  {r.stage:<22} {r.status:<9} {fmt_duration(r.elapsed_s):>7}{extra}")
    print("scores (HumanEval, HumanEval+, MBPP leaderboard and MBPP+ by protocol):")
    for line in score_lines(read_ledger(ws)):
        print(f"  {line}")
    print("gates:")
    for name, g in evaluate_gates(spec, ws).items():
        print(f"  {name:<7} {g.outcome.upper():<8} {g.description}: {g.reason}")
    if state.approvals:
        print("approvals:")
        for stage, approval in state.approvals.items():
            print(f"  {describe_approval(stage, approval)}")
    ok = all(r.status == "done" for r in rows)
    what = "every stage" if wanted is None or len(wanted) == len(spec.stages) else "every stage requested"
    print(f"pipeline: {what} finished" if ok else f"pipeline: NOT {what} finished")
    return 0 if ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        ws = prepare(args.workspace)
    except UnsafeWorkspace as exc:
        raise BadInput(str(exc)) from None
    if args.headless:
        try:
            return run_headless(ws, args.timeout)
        except OSError as exc:  # the workspace cannot be written (read-only, full): one line, not a traceback
            print(f"pmat demo: stopped: {exc}", file=sys.stderr)
            return 1
    from engine.cli.tui import cmd_tui

    send_command(ws, Run(["all"]))  # the console starts the supervisor that carries it out
    return cmd_tui(argparse.Namespace(workspace=ws.root, readonly=False, notice=(
        "pmat demo: building tiny models on the spot, then running the whole PMAT DAG on the CPU; "
        "gated stages wait for your approval (a)")))


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("demo", help="run the PMAT DAG on tiny models built on the spot")
    p.add_argument("--headless", action="store_true", help="no console: print progress and a summary")
    p.add_argument("--workspace", "-w", type=Path, default=Path("demo-workspace"))
    p.add_argument("--timeout", type=float, default=1800.0, help="headless: give up after this many seconds")
    p.set_defaults(func=cmd_demo)
