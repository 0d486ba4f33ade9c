"""What an acceptance criterion reads, from the spec alone: the benchmarks its expression names,
the protocol each is read under, the stages whose results it depends on. ``pmat check`` refuses
a spec whose protocol pins name nothing the expression reads, or whose gated stage could run
before that evidence (``spec_problems``); ``engine.gates`` evaluates criteria with the same answers.

Below ``engine.spec``, which calls ``spec_problems`` while it parses: the spec's types are
named for type checking only.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING, Any

from engine.data import protocols
from engine.data.protocols import Protocol

if TYPE_CHECKING:
    from engine.spec import Criterion, PipelineSpec

# the protocol a criterion reads for a code benchmark unless it pins another
DEFAULT_PROTOCOL = {"humaneval": "humaneval", "humaneval_plus": "humaneval_plus", "mbpp": "mbpp_leaderboard",
                    "mbpp_plus": "mbpp_plus"}


def dotted(node: ast.AST) -> str:
    """``a.b.c`` of a name or attribute chain in an expression (ValueError for anything else)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    raise ValueError(f"unsupported expression element {ast.dump(node)[:40]}")


def criterion_protocol(crit: Criterion, bench: str) -> Protocol | None:
    """The protocol a criterion reads ``bench`` under: its pin (an id, or {id, overrides}),
    else the official protocol of a code benchmark, else none (no protocol to match)."""
    pin = (crit.protocol or {}).get(bench)
    if pin is None:
        return protocols.get(DEFAULT_PROTOCOL[bench]) if bench in DEFAULT_PROTOCOL else None
    if isinstance(pin, str):
        return protocols.get(pin)
    overrides = {k: v for k, v in pin.items() if k not in ("id", "data_sha256")}
    return protocols.resolve(pin["id"], data_sha256=pin.get("data_sha256"), overrides=overrides)


def criterion_benchmarks(crit: Criterion) -> dict[str, set[str]]:
    """Benchmarks the expression reads, per checkpoint alias ("" for a single checkpoint)."""
    refs = [""] if crit.checkpoint else list(crit.checkpoints)
    out: dict[str, set[str]] = {alias: set() for alias in refs}
    for node in ast.walk(ast.parse(crit.expr, mode="eval")):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            try:
                parts = dotted(node).split(".")
            except ValueError:
                continue
            alias = "" if crit.checkpoint else parts[0]
            if len(parts) == (2 if crit.checkpoint else 3) and alias in out:
                out[alias].add(parts[-2])
    return out


def measures(kind: str, params: dict[str, Any]) -> str:
    """The ledger benchmark a stage's records carry: an eval's protocol's, else its kind."""
    proto = params.get("protocol")
    if kind == "eval" and isinstance(proto, str) and proto in protocols.PROTOCOLS:
        return protocols.PROTOCOLS[proto].benchmark
    return str(params.get("benchmark") or kind)


def criterion_sources(spec: PipelineSpec, crit: Criterion) -> set[str]:
    """Stages whose results a criterion reads: those producing its checkpoints, and those
    measuring one of them on a benchmark its expression names (eval ``benchmark``, or kind)."""
    refs = {"": crit.checkpoint} if crit.checkpoint else dict(crit.checkpoints)
    benches = criterion_benchmarks(crit)
    out: set[str] = set()
    for alias, ref in refs.items():
        want = spec.canonical_ref(ref)
        if src := spec.ref_stage(want):
            out.add(src)
        for name, entry in spec.stages.items():
            if measures(entry.kind, entry.params) in benches[alias] and any(
                    spec.canonical_ref(r) == want for r in entry.inputs.values()):
                out.add(name)
    return out


def gate_order_problems(spec: PipelineSpec) -> list[str]:
    """A gated stage must run after every stage whose results its criteria read; else it
    could be approved (and run) before the evaluations exist. One line per problem."""
    problems = []
    for stage, entry in spec.stages.items():
        if entry.approval != "required" or not entry.work_item or entry.work_item not in spec.work_items:
            continue
        upstream, todo = set(), list(spec.deps(stage))
        while todo:
            s = todo.pop()
            if s not in upstream and s in spec.stages:
                upstream.add(s)
                todo.extend(spec.deps(s))
        for ac in spec.work_items[entry.work_item].acceptance:
            if ac not in spec.acceptance:
                continue
            for src in sorted(criterion_sources(spec, spec.acceptance[ac]) - upstream - {stage}):
                problems.append(f"stages.{stage}: its approval answers for {ac}, which reads results of "
                                f"{src}: add {src} to stages.{stage}.after")
    return problems


def spec_problems(spec: PipelineSpec) -> list[str]:
    """What ``pmat check`` refuses about the gates: protocol pins that name no benchmark of
    the expression or no known protocol, and gated stages that could run before their evidence."""
    problems = []
    for name, crit in spec.acceptance.items():
        read = set().union(*criterion_benchmarks(crit).values())
        for bench, pin in (crit.protocol or {}).items():
            where = f"acceptance.{name}.protocol.{bench}"
            if bench not in read:
                problems.append(f"{where}: {bench!r} is not a benchmark the expression reads "
                                f"({', '.join(sorted(read)) or 'none'}); pin as BENCHMARK: PROTOCOL_ID")
            elif not isinstance(pin, str) and not (isinstance(pin, dict) and isinstance(pin.get("id"), str)):
                problems.append(f"{where}: expected a protocol id or {{id: ID, OVERRIDE: VALUE...}}, got {pin!r}")
            else:
                try:
                    criterion_protocol(crit, bench)
                except ValueError as exc:
                    problems.append(f"{where}: {exc}")
    return problems + gate_order_problems(spec)
