"""`pmat rehearse`: the PMAT DAG at real shapes on random weights, measured stage by stage.

It runs engine/pipelines/rehearsal.yaml under a real detached supervisor exactly as
`pmat demo --headless` drives the demo (gated stages approved on a visible override), with a
``Monitor`` sampling every job's GPU memory, RSS, the console's ETA, the reservations admitted
together and the free disk. At the end it writes ``<ws>/rehearsal/measured.json`` (the data
the spec's memory_gb/duration_h derive from) and prints a table.

``--shape STUDENT,TEACHER`` (e.g. ``tiny,tiny``) rehearses the same DAG on small shapes: the
tests run it on a CPU. ``--report`` only folds an existing workspace's measurements; ``--target
STAGE`` rehearses a part of the DAG (the stage with its upstream).
`pmat declare DATA SPEC` writes the declarations a measured data file gives
(``engine.measure.derive``) into a spec's stages, its comments and anchors kept.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from engine.cli._common import BadInput
from engine.spec import load_spec, pipeline_path
from engine.workspace import UnsafeWorkspace, Workspace

COMMANDS = ("rehearse", "declare")
REHEARSAL_APPROVER = "pmat rehearse"
REHEARSAL_OVERRIDE = "rehearsal: random weights fail the real gates by design"


def rehearsal_spec_text(shapes: tuple[str, str] | None) -> str:
    """The shipped rehearsal spec; with ``shapes``, its models at those shapes and every stage
    declared at 1 GiB under a 16 GiB budget (small shapes on a small box), named for its shapes."""
    text = pipeline_path("rehearsal").read_text()
    if shapes is None:
        return text
    data = yaml.safe_load(text)
    data["stages"]["student"]["params"]["shape"], data["stages"]["teacher"]["params"]["shape"] = shapes
    for entry in data["stages"].values():
        entry["memory_gb"] = 1
    data["settings"] |= {"memory_budget_gb": 16, "memory_margin_gb": 1}
    data["name"] = f"{data['name']}-{shapes[0]}-{shapes[1]}"  # the H200's measured phases are not its ETA's
    return yaml.safe_dump(data, sort_keys=False)


def prepare(root: Path, shapes: tuple[str, str] | None) -> Workspace:
    ws = Workspace(root).init()
    if not ws.spec_path.exists():
        ws.spec_path.write_text(rehearsal_spec_text(shapes))
        ws.spec_path.chmod(0o600)
    return ws


def table(measured: dict) -> list[str]:
    lines = [f"{'stage':<22} {'status':<8} {'gpu GiB':>7} {'rss GiB':>7} {'foot GiB':>8} {'decl GiB':>8} "
             f"{'disk GiB':>8} {'wall s':>7} {'throughput':>14} {'eta err':>7}"]
    for name, m in measured["stages"].items():
        if m.get("status") != "done":
            lines.append(f"{name:<22} {m.get('status', '?'):<8}")
            continue
        thr = f"{m['throughput']:.2f} {m['unit']}/s" if m.get("throughput") else "-"
        eta = f"{100 * m['eta_rel_error']:.0f}%" if m.get("eta_rel_error") is not None else "-"
        lines.append(f"{name:<22} done     {m['gpu_peak_gib']:>7.1f} {m['rss_peak_gib']:>7.1f} {m['footprint_gib']:>8.1f} "
                     f"{m['declared_memory_gb']:>8.1f} {m['disk_written_gib']:>8.1f} {m['wall_s'] or 0:>7.0f} "
                     f"{thr:>14} {eta:>7}")
    lines.append(f"together: at most {measured['max_reserved_together_gib']:.1f} GiB reserved, "
                 f"{measured['max_footprint_together_gib']:.1f} GiB used (budget {measured['budget_gib']} GiB); "
                 f"least free disk {measured['min_disk_free_gib']:.1f} GiB")
    return lines


def finish(ws: Workspace, fold_into: Path | None = None) -> int:
    from engine.measure import check, derive, fold, report, save

    spec = load_spec(ws.spec_path)
    measured = report(ws, spec)
    measured["derived"] = derive(measured)
    measured["declaration_problems"] = check(measured)
    save(ws.root / "rehearsal" / "measured.json", measured)
    print("\n".join(table(measured)))
    for line in measured["declaration_problems"]:
        print(f"declaration outside [measured, 1.25 x measured]: {line}")
    if fold_into is not None:
        try:
            data = json.loads(fold_into.read_text())
        except (OSError, ValueError) as exc:
            raise BadInput(f"--fold-into {fold_into}: cannot read the measured data file ({exc})") from None
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        save(fold_into, fold(data, measured, source=f"{spec.name} run, folded {when}"))
        print(f"folded into {fold_into}: re-derive rehearsal.yaml's memory_gb from it (engine.measure.derive)")
    return 0


def cmd_rehearse(args: argparse.Namespace) -> int:
    shapes = tuple(args.shape.split(",")) if args.shape else None
    if shapes is not None and len(shapes) != 2:
        raise BadInput(f"--shape: expected STUDENT,TEACHER (e.g. tiny,tiny), got {args.shape!r}")
    try:
        ws = prepare(args.workspace, shapes)
    except UnsafeWorkspace as exc:
        raise BadInput(str(exc)) from None
    if args.report:
        return finish(ws, args.fold_into)
    from engine.cli.demo import run_headless
    from engine.measure import Monitor

    monitor = Monitor(ws, load_spec(ws.spec_path))
    monitor.start()
    try:
        rc = run_headless(ws, args.timeout, REHEARSAL_APPROVER, REHEARSAL_OVERRIDE, tuple(args.target or ["all"]))
    finally:
        monitor.stop.set()
        monitor.join(timeout=5)
    finish(ws, args.fold_into)
    return rc


def cmd_declare(args: argparse.Namespace) -> int:
    from engine.declarations import DeclarationError, apply
    from engine.measure import check, derive, runs
    from engine.spec import SpecError, parse_spec
    from engine.workspace import atomic_write_bytes

    try:
        data = json.loads(args.data.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise BadInput(f"{args.data}: expected a JSON object with a 'stages' mapping (a measured data file)")
        stages = data["stages"]
        for name, m in stages.items():
            for k, r in enumerate(runs(m) if m.get("status") == "done" else []):
                bad = [key for key in ("footprint_gib", "wall_s") if not isinstance(r.get(key), (int, float))]
                if bad:
                    raise BadInput(f"{args.data}: stage {name!r}, run {k + 1}: no number for {bad[0]!r}")
        derived = derive(data)
    except OSError as exc:
        raise BadInput(f"{args.data}: cannot read the measured data file ({exc.strerror})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadInput(f"{args.data}: not a measured data file ({type(exc).__name__}: {exc})") from None
    try:
        text = args.spec.read_text()
        new = apply(text, derived)
        spec = parse_spec(yaml.safe_load(new), str(args.spec))  # the spec as written must still load
    except OSError as exc:
        raise BadInput(f"{args.spec}: cannot read the spec ({exc})") from None
    except (DeclarationError, yaml.YAMLError) as exc:
        raise BadInput(f"{args.spec}: {str(exc).splitlines()[0]}") from None
    except SpecError as exc:
        raise BadInput(str(exc)) from None
    if new != text:
        atomic_write_bytes(args.spec, new.encode())
    declared = {n: {**m, "declared_memory_gb": spec.stages[n].memory_gb} for n, m in stages.items()
                if m.get("status") == "done" and n in spec.stages}
    print(f"{args.spec}: {len(declared)} stages declared from {args.data}" + (" (unchanged)" if new == text else ""))
    for line in check({"stages": declared}):
        print(f"no single value within [measured, 1.25 x measured] of every run: {line}")
    return 0


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("rehearse", help="run the PMAT DAG at real shapes on random weights and measure each stage")
    p.add_argument("--workspace", "-w", type=Path, default=Path("rehearsal-workspace"))
    p.add_argument("--shape", help="STUDENT,TEACHER model shapes (default: the spec's 7b,32b; tiny,tiny on a CPU)")
    p.add_argument("--timeout", type=float, default=1500.0, help="give up waiting after this many seconds")
    p.add_argument("--target", action="append", help="rehearse only this stage or work item with its upstream "
                   "(repeatable; default: every stage)")
    p.add_argument("--report", action="store_true", help="only fold the workspace's measurements into a report")
    p.add_argument("--fold-into", type=Path, help="also fold the run's measurements into this data file "
                   "(engine/pipelines/data/rehearsal-measured.json: the ETA's phases and the declarations come from it)")
    p.set_defaults(func=cmd_rehearse)
    p = subs.add_parser("declare", help="write a measured data file's memory_gb and duration_h into a spec's stages")
    p.add_argument("data", type=Path, help="the measured data file (e.g. engine/pipelines/data/rehearsal-measured.json)")
    p.add_argument("spec", type=Path, help="the pipeline spec whose stages get the declarations (edited in place)")
    p.set_defaults(func=cmd_declare)

