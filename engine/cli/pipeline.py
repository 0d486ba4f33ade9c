"""Pipeline commands: init, check, status, run, approve, cancel, retry, logs, supervise."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from engine.approvals import stage_evidence
from engine.cli._common import (
    BadInput,
    add_workspace_arg,
    fmt_bytes,
    fmt_duration,
    spec_of,
    workspace_of,
)
from engine.events import EventReader
from engine.overview import build_overview
from engine.procs import logind_kills_user_processes
from engine.spec import SpecError, load_spec, pipeline_path
from engine.state import load_state
from engine.supervisor import (
    Supervisor,
    SupervisorRunning,
    send_command,
    start_supervisor_detached,
    supervisor_identity,
)
from engine.workspace import Workspace


def cmd_init(args: argparse.Namespace) -> int:
    ws = Workspace(args.directory)
    if ws.spec_path.exists() and not args.force:
        raise BadInput(f"{ws.spec_path}: already exists (--force to replace)")
    src = pipeline_path(args.pipeline) if not Path(args.pipeline).exists() else Path(args.pipeline)
    if not src.exists():
        raise BadInput(f"{args.pipeline}: no such pipeline (shipped: pmat, demo) or spec file")
    ws.init()
    shutil.copyfile(src, ws.spec_path)
    ws.spec_path.chmod(0o600)
    spec_of(ws)
    print(f"workspace {ws.root} ready with pipeline {src.stem}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    path = args.spec or workspace_of(args).spec_path
    try:
        spec = load_spec(path)
    except SpecError as exc:
        print(f"pmat: error: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: ok ({len(spec.stages)} stages, {len(spec.work_items)} work items, {len(spec.acceptance)} criteria)")
    return 0


def _status_lines(ws: Workspace) -> tuple[list[str], dict]:
    spec = spec_of(ws)
    ov = build_overview(ws, spec, load_state(ws))
    sup = f"supervisor pid {ov.supervisor_pid}" if ov.supervisor_pid else "supervisor NOT running (pmat supervise)"
    lines = [
        f"{spec.name} · {ws.root} · {sup}",
        f"critical path ({ov.critical_hours:.1f} h, {ov.remaining_hours:.1f} h to go): {' -> '.join(ov.critical_path)}",
        f"{'STAGE':<22} {'ITEM':<9} {'STATUS':<10} {'PROGRESS':<18} {'RATE/h':>8} {'ETA':>7} {'RSS':>9}  WHY",
    ]
    for r in ov.rows:
        prog = f"{r.done:g}/{r.total:g} {r.unit}" if r.total else "-"
        rate = f"{r.rate_per_h:.1f}" if r.rate_per_h else "-"
        mark = "*" if r.critical else " "
        why = "" if r.status in ("running", "done") else r.reason
        lines.append(f"{mark}{r.stage:<21} {r.work_item or '-':<9} {r.status:<10} {prog:<18} {rate:>8} "
                     f"{fmt_duration(r.eta_s):>7} {fmt_bytes(r.rss or None):>9}  {why}")
    return lines, ov.as_dict()


def cmd_status(args: argparse.Namespace) -> int:
    ws = workspace_of(args)
    lines, data = _status_lines(ws)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print("\n".join(lines))
    return 0


def _send(args: argparse.Namespace, command: str, **cargs) -> int:
    ws = workspace_of(args)
    spec_of(ws)
    cid = send_command(ws, command, **cargs)
    if supervisor_identity(ws) is None:
        print(f"queued command {command} ({cid}); no supervisor runs: start one with `pmat supervise -w {ws.root}`")
        return 0
    return _await_ack(ws, cid, command, args.wait)


def _await_ack(ws: Workspace, cid: str, command: str, wait_s: float) -> int:
    reader = EventReader(ws.journal_path)
    deadline = time.monotonic() + wait_s
    acked = False
    while time.monotonic() < deadline:
        for ev in reader.poll():
            if ev.get("id") != cid:
                continue
            if ev["kind"] == "command_rejected":
                print(f"pmat: error: {command} rejected: {ev.get('reason')}", file=sys.stderr)
                return 1
            if ev["kind"] == "command_received":
                deadline = time.monotonic() + 1.0  # give a rejection a moment to follow
                acked = True
        time.sleep(0.1)
    if acked:
        print(f"{command}: done")
        return 0
    print(f"{command}: sent ({cid}); the supervisor has not answered yet")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return _send(args, "run", targets=args.targets)


def cmd_approve(args: argparse.Namespace) -> int:
    ws = workspace_of(args)
    spec = spec_of(ws)
    if args.target in spec.stages:
        ev = stage_evidence(spec, ws, args.target)
        print(f"approving {args.target} on evidence: {json.dumps(ev)}")
        return _send(args, "approve", target=args.target, evidence=ev, note=args.note)
    return _send(args, "approve", target=args.target, note=args.note)


def cmd_cancel(args: argparse.Namespace) -> int:
    return _send(args, "cancel", job=args.job)


def cmd_retry(args: argparse.Namespace) -> int:
    return _send(args, "retry", job=args.job)


def _fmt_event(ev: dict) -> str:
    ts = time.strftime("%H:%M:%S", time.localtime(ev.get("ts", 0)))
    rest = {k: v for k, v in ev.items() if k not in ("ts", "kind")}
    return f"{ts} {ev.get('kind', '?'):<13} {json.dumps(rest, default=str)}"


def cmd_logs(args: argparse.Namespace) -> int:
    ws = workspace_of(args)
    state = load_state(ws)
    job = args.job
    if job in state.stages and state.stages[job].latest:
        job = state.stages[job].latest.job_id
    path = ws.journal_path if job == "supervisor" else ws.job_log(job)
    if not path.exists():
        raise BadInput(f"{path}: no log for job {args.job!r}")
    reader = EventReader(path)
    while True:
        for ev in reader.poll():
            print(_fmt_event(ev), flush=True)
        if not args.follow:
            return 0
        time.sleep(0.5)


def cmd_supervise(args: argparse.Namespace) -> int:
    ws = workspace_of(args)
    warn = logind_kills_user_processes()
    if warn:
        print(f"pmat: warning: {warn}", file=sys.stderr)
    if args.detach:
        ident = start_supervisor_detached(ws)
        print(f"supervisor started (pid {ident.pid})")
        return 0
    try:
        Supervisor(ws, spec_of(ws)).run_forever()
    except SupervisorRunning as exc:
        print(f"pmat: {exc}", file=sys.stderr)
        return 1
    return 0


def register(subs: argparse._SubParsersAction) -> None:
    def add(name: str, func, help_: str) -> argparse.ArgumentParser:
        p = subs.add_parser(name, help=help_)
        p.set_defaults(func=func)
        return p

    p = add("init", cmd_init, "create a workspace with a shipped pipeline spec")
    p.add_argument("directory", type=Path)
    p.add_argument("--pipeline", default="pmat", help="pmat, demo, or a spec file")
    p.add_argument("--force", action="store_true")

    p = add("check", cmd_check, "validate a pipeline spec (exit 2 with a one-line error)")
    p.add_argument("spec", nargs="?", type=Path)
    add_workspace_arg(p)

    p = add("status", cmd_status, "what runs, what waits and why")
    p.add_argument("--json", action="store_true")
    add_workspace_arg(p)

    for name, func, help_, arg, arg_help in (
        ("run", cmd_run, "request stages (with their upstream) to run", "targets", "stage, work item or 'all'"),
        ("approve", cmd_approve, "approve a gated stage (or the stages an AC gates)", "target", "stage or AC id"),
        ("cancel", cmd_cancel, "cancel a job (SIGTERM, then SIGKILL after the grace period)", "job", "job id or stage"),
        ("retry", cmd_retry, "run a failed, crashed or cancelled job again", "job", "job id or stage"),
    ):
        p = add(name, func, help_)
        p.add_argument(arg, nargs="+" if arg == "targets" else None, help=arg_help)
        p.add_argument("--wait", type=float, default=5.0, help="seconds to wait for the supervisor's answer")
        if name == "approve":
            p.add_argument("--note", default="")
        add_workspace_arg(p)

    p = add("logs", cmd_logs, "print a job's event log ('supervisor' for the journal)")
    p.add_argument("job")
    p.add_argument("-f", "--follow", action="store_true")
    add_workspace_arg(p)

    p = add("supervise", cmd_supervise, "run the workspace's supervisor (one per workspace)")
    p.add_argument("--detach", action="store_true", help="start it in the background and return")
    add_workspace_arg(p)
