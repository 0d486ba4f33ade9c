"""Pipeline commands: init, check, status, run, approve, cancel, retry, logs, supervise.

Names are checked here, against the spec and the logs, before anything is sent: an unknown
name or an action with nothing to do is refused with exit 2 whether or not a supervisor
runs. Only what a command needs is imported (``pmat status`` loads no ML library).
"""

from __future__ import annotations

import argparse
import difflib
import json
import shutil
import sys
import time
from collections import Counter
from dataclasses import fields
from pathlib import Path

from engine.cli._common import BadInput, add_workspace_arg, spec_of, workspace_of
from engine.dag import expand_targets
from engine.events import EventReader
from engine.inbox import Approve, Cancel, Command, Retry, Run, send_command, supervisor_identity
from engine.overview import Overview, build_overview, load_spec_fast, summary
from engine.spec import PipelineSpec, SpecError, load_spec, pipeline_path
from engine.state import PipelineState, load_state
from engine.text import fmt_bytes, fmt_duration
from engine.workspace import UnsafeWorkspace, Workspace

COMMANDS = ("init", "check", "status", "run", "approve", "cancel", "retry", "logs", "supervise")
FOLLOW_POLL_S = 0.5


def did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def unknown(what: str, name: str, known: list[str], hint: str = "`pmat status` lists them") -> BadInput:
    return BadInput(f"unknown {what} {name!r}{did_you_mean(name, known)}; {hint}")


def quick_spec(ws: Workspace) -> PipelineSpec:
    """The spec without its stage-parameter check (which imports torch): enough to check names."""
    try:
        return load_spec_fast(ws.spec_path, check_params=False)
    except SpecError as exc:
        raise BadInput(str(exc)) from None


def cmd_init(args: argparse.Namespace) -> int:
    ws = Workspace(args.directory)
    if ws.spec_path.exists() and not args.force:
        raise BadInput(f"{ws.spec_path}: already exists (--force to replace)")
    src = pipeline_path(args.pipeline) if not Path(args.pipeline).exists() else Path(args.pipeline)
    if not src.exists():
        raise BadInput(f"{args.pipeline}: no such pipeline (shipped: pmat, demo) or spec file")
    try:
        ws.init()
    except UnsafeWorkspace as exc:
        raise BadInput(str(exc)) from None
    shutil.copyfile(src, ws.spec_path)
    ws.spec_path.chmod(0o600)
    spec_of(ws)
    print(f"workspace {ws.root} ready with pipeline {src.stem}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from engine.preflight import check_spec_files

    path = args.spec or workspace_of(args).spec_path
    try:
        spec = load_spec(path)
    except SpecError as exc:
        print(f"pmat: error: {exc}", file=sys.stderr)
        return 2
    problems = check_spec_files(spec, Workspace(Path(path).parent), Path(path).resolve().parent)
    if problems:  # the first, on one line (a run would stop at it); the count says if more wait
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        print(f"pmat: error: {path}: {problems[0]}{more}", file=sys.stderr)
        return 2
    from engine.sandbox import check_line, isolation_layers

    line = check_line()  # the host, not the spec: a notice unless nothing the kernel enforces is there
    if line and not isolation_layers()["kernel"]:
        print(f"pmat: error: {line}", file=sys.stderr)
        return 2
    if line:
        print(f"pmat: notice: {line}", file=sys.stderr)
    print(f"{path}: ok ({len(spec.stages)} stages, {len(spec.work_items)} work items, {len(spec.acceptance)} criteria)")
    return 0


def summary_line(ov: Overview) -> str:
    """``3 running · 1 blocked · ~4m12s left``: the console header's words."""
    return " · ".join(text for text, _ in summary(ov))


def _status_lines(ws: Workspace) -> tuple[list[str], dict]:
    spec, state = quick_spec(ws), load_state(ws)
    ov = build_overview(ws, spec, state)
    w = max(21, *(len(s) for s in spec.stages))
    sup = f"supervisor pid {ov.supervisor_pid}" if ov.supervisor_pid else "supervisor NOT running"
    lines = [f"{spec.name} · {ws.root} · {sup}"]
    lines += [f"SUPERVISOR DOWN: {ov.supervisor_down}"] if ov.supervisor_down else []
    lines += [f"WARNING: {warning}"] if (warning := ov.log_warning()) else []
    lines += [
        summary_line(ov),
        f"critical path ({fmt_duration(ov.critical_hours * 3600)}, {fmt_duration(ov.left_s)} to go): "
        f"{' -> '.join(ov.critical_path)}",
        f"{'STAGE':<{w + 1}} {'ITEM':<9} {'STATUS':<10} {'PROGRESS':<18} {'RATE/h':>8} {'ETA':>12} {'RSS':>9}  WHY",
    ]
    for r in ov.rows:
        prog = f"{r.done:g}/{r.total:g} {r.unit}" if r.total else "-"
        rate = f"{r.rate_per_h:.1f}" if r.rate_per_h else "-"
        mark = "*" if r.critical else " "
        why = f"REVOKED: {r.revoked}" if r.revoked else "" if r.status in ("running", "done") else r.reason
        eta = fmt_duration(r.eta_s) + (f"±{fmt_duration(r.eta_pm_s)}" if r.eta_pm_s else "")
        status = "revoked" if r.revoked and r.status == "done" else r.status
        why = f"[{where}] {why}".rstrip() if (where := r.where()) else why
        lines.append(f"{mark}{r.stage:<{w}} {r.work_item or '-':<9} {status:<10} {prog:<18} {rate:>8} "
                     f"{eta:>12} {fmt_bytes(r.rss or None):>9}  {why}")
    if state.approvals:
        from engine.approvals import describe_approval  # says an override out loud

        why = {r.stage: r.revoked for r in ov.rows if r.revoked}
        lines += ["approvals:", *(f"  {describe_approval(s, a)}" + (f" — REVOKED: {why[s]}" if s in why else "")
                                  for s, a in sorted(state.approvals.items()))]
    return lines, ov.as_dict()


def _gates(ws: Workspace, spec: PipelineSpec) -> dict[str, dict]:
    """Every criterion's verdict with the records that count and those ignored (and why); read-only."""
    from engine.gates import evaluate_gates

    return {ac: g.as_dict() for ac, g in evaluate_gates(spec, ws).items()}


def cmd_status(args: argparse.Namespace) -> int:
    ws = workspace_of(args)
    lines, data = _status_lines(ws)
    if args.json:
        data["gates"] = _gates(ws, quick_spec(ws))
        print(json.dumps(data, indent=2, default=str))
    else:
        print("\n".join(lines))
    return 0


def _send(args: argparse.Namespace, cmd: Command) -> int:
    ws = workspace_of(args)
    command = cmd.NAME
    cid = send_command(ws, cmd)
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
            if ev.get("kind") == "command_rejected":
                raise BadInput(f"{command} rejected by the supervisor: {ev.get('reason')}")
            if ev.get("kind") == "command_received":
                deadline = time.monotonic() + 1.0  # give a rejection a moment to follow
                acked = True
        time.sleep(0.1)
    if acked:
        print(f"{command}: done")
        return 0
    print(f"{command}: sent ({cid}); the supervisor has not answered yet")
    return 0


def _stage_of(spec: PipelineSpec, state: PipelineState, target: str, what: str = "stage or job") -> str:
    """The stage a stage name or a job id (``stage.N``) names; unknown names are refused."""
    if target in spec.stages:
        return target
    if target in state.jobs and state.jobs[target].stage in spec.stages:
        return state.jobs[target].stage
    raise unknown(what, target, [*spec.stages, *state.jobs])


def cmd_run(args: argparse.Namespace) -> int:
    ws = workspace_of(args)
    spec, state = quick_spec(ws), load_state(ws)
    closure = expand_targets(spec, args.targets)
    if isinstance(closure, str):
        raise unknown("stage or work item", closure, ["all", *spec.stages, *spec.work_items])
    todo = [s for s in closure if not state.stage(s).requested and state.stage(s).status in ("pending", "queued")]
    if not todo:
        named = [s for t in args.targets for s in ([t] if t in spec.stages else spec.stages_of(t) or spec.stages)]
        states = (f"{s} is {state.stage(s).status}" for s in named) if len(named) <= 3 else (
            f"{n} {status}" for status, n in sorted(Counter(state.stage(s).status for s in named).items()))
        raise BadInput(f"run: nothing to start ({', '.join(states)}); `pmat retry STAGE` runs a finished stage again")
    return _send(args, Run(args.targets))


def cmd_approve(args: argparse.Namespace) -> int:
    ws = workspace_of(args)
    spec = quick_spec(ws)
    target = args.target
    if target in spec.stages:
        stages = [target]
    elif target in spec.acceptance:
        stages = spec.gated_by(target)
        if not stages:
            raise BadInput(f"approve: no gated stage depends on {target}; nothing to approve")
    else:
        raise unknown("stage or criterion", target, [*spec.stages, *spec.acceptance])
    if target in spec.stages and spec.stages[target].approval != "required":
        raise BadInput(f"approve: stage {target} needs no approval; nothing to approve")
    from engine.approvals import check_approvable  # hashes inputs: only when approving

    for stage in stages:  # the supervisor decides the same way; refused here, nothing is sent
        evidence, refusal = check_approvable(spec, ws, stage, args.override)
        if refusal:
            raise BadInput(refusal)
    if target in spec.stages:
        print(f"approving {target} on evidence: {json.dumps(evidence)}")
    return _send(args, Approve(target, evidence if target in spec.stages else None, args.note, args.override or None))


def cmd_cancel(args: argparse.Namespace) -> int:
    ws = workspace_of(args)
    spec, state = quick_spec(ws), load_state(ws)
    stage = _stage_of(spec, state, args.job)
    status = state.stage(stage).status
    if status not in ("running", "queued"):
        raise BadInput(f"cancel: {stage} is {status}; nothing to cancel")
    return _send(args, Cancel(args.job))


def cmd_retry(args: argparse.Namespace) -> int:
    ws = workspace_of(args)
    spec, state = quick_spec(ws), load_state(ws)
    stage = _stage_of(spec, state, args.job)
    st = state.stage(stage)
    if st.latest is None or st.status not in ("failed", "crashed", "cancelled"):
        hint = "`pmat run` starts it" if st.latest is None else "only failed, crashed or cancelled stages are retried"
        raise BadInput(f"retry: {stage} is {st.status}; nothing to retry ({hint})")
    return _send(args, Retry(args.job))


def _log_target(ws: Workspace, spec: PipelineSpec, state: PipelineState, name: str) -> tuple[Path, str | None]:
    """(log path, job id or None for the journal) of a stage's latest job, a job or 'supervisor'."""
    if name == "supervisor":
        return ws.journal_path, None
    job = name
    if name in spec.stages:
        if (latest := state.job_of(name)) is None:
            raise BadInput(f"logs: {name} has not run yet; no log")
        job = latest
    elif name not in state.jobs and not ws.job_log(name).exists():
        raise unknown("stage or job", name, ["supervisor", *spec.stages, *state.jobs])
    return ws.job_log(job), job


def _job_over(state: PipelineState, job: str | None, ws: Workspace) -> bool:
    """Following ends when the job has finished (or, for the journal, when no supervisor runs)."""
    if job is None:
        return supervisor_identity(ws) is None
    state.refresh()
    a = state.jobs.get(job)
    return a is None or a.outcome is not None


def cmd_logs(args: argparse.Namespace) -> int:
    ws = workspace_of(args)
    spec, state = quick_spec(ws), load_state(ws)
    path, job = _log_target(ws, spec, state, args.job)
    if args.out:
        return _print_out(ws, job, args)
    if not path.exists():
        raise BadInput(f"{path}: no log for job {args.job!r} yet")
    from pmat_tui.logfmt import human_lines  # plain Python, no console

    reader = EventReader(path)
    while True:
        over = args.follow and _job_over(state, job, ws)  # read what the job wrote before it ended
        events = reader.poll()
        if args.raw:
            lines = [json.dumps(ev, default=str) for ev in events]
        else:
            lines = [line for _, line in human_lines(events, show_all=args.all)]
        if lines:
            print("\n".join(lines), flush=True)
        if not args.follow or over:
            return 0
        time.sleep(FOLLOW_POLL_S)


def _print_out(ws: Workspace, job: str | None, args: argparse.Namespace) -> int:
    """The job's own stdout and stderr (tracebacks go there), as written; ``-f`` as for events."""
    path = ws.logs_dir / "supervisor.out" if job is None else ws.job_log(job).with_suffix(".out")
    if not path.exists():
        raise BadInput(f"{path}: {job or 'the supervisor'} wrote no output")
    state = load_state(ws)
    with path.open("rb") as fh:
        while True:
            over = args.follow and _job_over(state, job, ws)
            chunk = fh.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            if not args.follow or over:
                return 0
            time.sleep(FOLLOW_POLL_S)


def cmd_supervise(args: argparse.Namespace) -> int:
    from engine.inbox import start_supervisor_detached
    from engine.procs import logind_kills_user_processes
    from engine.supervisor import Supervisor, SupervisorRunning

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

    for cls, func, help_, arg_help in (
        (Run, cmd_run, "request stages (with their upstream) to run", "stage, work item or 'all'"),
        (Approve, cmd_approve, "approve a gated stage (or the stages an AC gates)", "stage or AC id"),
        (Cancel, cmd_cancel, "cancel a job (SIGTERM, then SIGKILL after the grace period)", "job id or stage"),
        (Retry, cmd_retry, "run a failed, crashed or cancelled job again", "job id or stage"),
    ):
        p = add(cls.NAME, func, help_)  # the command's word and its target's key, as engine.inbox spells them
        p.add_argument(fields(cls)[0].name, nargs="+" if cls is Run else None, help=arg_help)
        p.add_argument("--wait", type=float, default=5.0, help="seconds to wait for the supervisor's answer")
        if cls is Approve:
            p.add_argument("--note", default="")
            p.add_argument("--override", metavar="REASON", default=None,
                           help="approve although a criterion fails, has no data or is stale, saying why")
        add_workspace_arg(p)

    p = add("logs", cmd_logs, "print a job's event log ('supervisor' for the journal), one line per step")
    p.add_argument("job", help="stage, job id or 'supervisor'")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("--out", action="store_true", help="the job's stdout/stderr instead (tracebacks)")
    p.add_argument("--all", action="store_true", help="also the resource ticks")
    p.add_argument("--raw", action="store_true", help="the JSON events as written")
    add_workspace_arg(p)

    p = add("supervise", cmd_supervise, "run the workspace's supervisor (one per workspace)")
    p.add_argument("--detach", action="store_true", help="start it in the background and return")
    add_workspace_arg(p)
