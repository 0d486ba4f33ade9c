"""Acceptance gates: expressions over results of the checkpoint they name, and nothing else.

A criterion's names are benchmarks (``humaneval.pass_at_1``) of its checkpoint, or
aliases of several checkpoints (``fp16.humaneval.pass_at_1``). A ledger record counts
only with provenance (committed by a job of this workspace, in the intact part of the
ledger's hash chain), when its ``model_hash`` is the checkpoint's verified content hash
(bytes hashed, agreeing with the manifest) and, for a code benchmark, when it was
measured under the criterion's protocol (id and digest), on the pinned data, over the
whole task set, with numbers that recompute from its per-problem outcomes. Every other
record of that checkpoint is listed in ``ignored`` with the reason. Outcomes: pass,
fail, no_data, stale (records exist only for an older checkpoint or protocol).
"""

from __future__ import annotations

import ast
import operator
import re
import time
from dataclasses import dataclass, field
from typing import Any

from engine.content_id import CorruptArtifact, HashCache, ref_hash
from engine.data import protocols
from engine.data.protocols import Protocol
from engine.refs import resolve_ref
from engine.results import DEFAULT_PROTOCOL, incomparable, read_ledger, short_diff
from engine.spec import REF_RE, Criterion, PipelineSpec
from engine.workspace import Workspace


def metric_key(name: str) -> str:
    """'pass@1' -> 'pass_at_1', 'rewards/margins' -> 'rewards_margins'."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name.replace("@", "_at_"))


@dataclass
class GateResult:
    criterion: str
    outcome: str  # pass | fail | no_data | stale
    expr: str
    description: str
    values: dict[str, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)  # ids of the ledger records that count
    ignored: list[str] = field(default_factory=list)  # "ledger:N (bench): ignored: why" for the others
    checkpoints: dict[str, str | None] = field(default_factory=dict)  # alias -> content hash
    newest_record_ts: float | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_CMP = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
        ast.Eq: operator.eq, ast.NotEq: operator.ne}
_FUNCS = {"max": max, "min": min, "abs": abs}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise ValueError(f"unsupported expression element {ast.dump(node)[:40]}")


def evaluate_expr(expr: str, lookup) -> Any:
    """Evaluate a restricted expression: numbers, dotted names, + - * /, comparisons,
    and/or/not, max/min/abs. ``lookup(dotted_name)`` gives a value or None (no data).

    Three-valued: an unknown operand makes a comparison unknown (None), but
    ``False and unknown`` is False and ``True or unknown`` is True, so a gate that
    already fails on the data present says so.
    """

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.Name | ast.Attribute):
            return lookup(_dotted(node))
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            a, b = ev(node.left), ev(node.right)
            return None if a is None or b is None else _BIN[type(node.op)](a, b)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
            v = ev(node.operand)
            return None if v is None else (-v if isinstance(node.op, ast.USub) else not v)
        if isinstance(node, ast.BoolOp):
            vals = [ev(v) for v in node.values]
            decisive = isinstance(node.op, ast.Or)  # the value that settles it: True for or, False for and
            if any(v is not None and bool(v) is decisive for v in vals):
                return decisive
            return None if any(v is None for v in vals) else not decisive
        if isinstance(node, ast.Compare):
            left, unknown = ev(node.left), False
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = ev(right_node)
                if type(op) not in _CMP:
                    raise ValueError(f"unsupported comparison {type(op).__name__}")
                if left is None or right is None:
                    unknown = True
                elif not _CMP[type(op)](left, right):
                    return False
                left = right
            return None if unknown else True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            args = [ev(a) for a in node.args]
            return None if any(a is None for a in args) else _FUNCS[node.func.id](*args)
        raise ValueError(f"unsupported expression element {ast.dump(node)[:40]}")

    return ev(ast.parse(expr, mode="eval"))


_DATA_FIELDS = ("data_sha256", "data_sha256_decompressed", "data_pinned_by")


def _fields(proto: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in proto.items() if k not in _DATA_FIELDS}


def spec_protocols(spec: PipelineSpec, ref: str, bench: str) -> list[dict[str, Any]]:
    """The protocols (data fields aside) the spec's eval stages measuring ``ref`` on ``bench``
    would record now: a record under none of them predates a protocol change in the spec."""
    want, out = _canonical_ref(spec, ref), []
    for entry in spec.stages.values():
        params = entry.params
        if entry.kind != "eval" or _measures(entry.kind, params) != bench or not any(
                _canonical_ref(spec, r) == want for r in entry.inputs.values()):
            continue
        try:
            official = protocols.get(str(params.get("protocol")))
            overrides = dict(params.get("overrides") or {})
            if params.get("limit"):
                overrides["n_tasks"] = min(int(params["limit"]), official.n_tasks)
            out.append(_fields(protocols.resolve(official.id, overrides=overrides).as_dict()))
        except (ValueError, TypeError):
            continue  # pmat check names a bad protocol or override
    return out


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


def evaluate_criterion(spec: PipelineSpec, ws: Workspace, name: str, crit: Criterion,
                       ledger: list[dict[str, Any]], cache: HashCache) -> GateResult:
    refs = {"": crit.checkpoint} if crit.checkpoint else dict(crit.checkpoints)
    res = GateResult(name, "no_data", crit.expr, crit.description)
    corrupt = []
    for alias, ref in refs.items():
        try:
            res.checkpoints[alias] = ref_hash(spec, ws, ref, cache)
        except CorruptArtifact as exc:
            res.checkpoints[alias] = None
            corrupt.append(str(exc))
    hashes = res.checkpoints
    paths = {alias: resolve_ref(spec, ws, ref, ws.spec_path.parent) for alias, ref in refs.items()}
    stale: dict[str, str] = {}
    missing: set[str] = set()

    def lookup(dotted: str) -> float | None:
        parts = dotted.split(".")
        alias = "" if crit.checkpoint else parts.pop(0)
        if alias not in refs or len(parts) != 2:
            raise ValueError(f"{name}: name {dotted!r} is not CHECKPOINT.BENCHMARK.METRIC")
        bench, metric = parts
        h, proto = hashes[alias], criterion_protocol(crit, bench)
        now = spec_protocols(spec, refs[alias], bench) if proto else []
        mine = []
        for r in ledger:
            if (r.get("benchmark") != bench or not isinstance(r.get("metrics"), dict)
                    or not any(metric_key(str(k)) == metric for k in r["metrics"])):
                continue
            if h is None or r.get("model_hash") != h:
                if r.get("model_path") == paths[alias]:
                    res.ignored.append(f"{r['id']} ({bench}): ignored: "
                                       f"{r['ignored'] or 'measured another version of the checkpoint'}")
                    if not r["ignored"]:
                        stale[dotted] = "results are of an older version of the checkpoint"
                continue
            have = _fields(r["protocol"]) if isinstance(r.get("protocol"), dict) else {}
            why = (("provenance", r["ignored"]) if r["ignored"]
                   else ("protocol", f"protocol differs: {'; '.join(short_diff(have, now[0]))}")
                   if now and have not in now else incomparable(r, proto) if proto else None)
            if why is None:
                mine.append(r)
            elif why[0] == "protocol":
                stale[dotted] = f"protocol changed: {why[1].removeprefix('protocol differs: ')}"
                res.ignored.append(f"{r['id']} ({bench}): ignored: {why[1]}")
            else:
                res.ignored.append(f"{r['id']} ({bench}): ignored: {why[1]}")
        if not mine:
            missing.add(dotted)
            return None
        rec = mine[-1]
        value = next(v for k, v in rec["metrics"].items() if metric_key(k) == metric)
        res.values[dotted] = value
        res.evidence.append(rec["id"])
        res.newest_record_ts = max(res.newest_record_ts or 0, rec.get("ts") or 0) or None
        return value

    ok = evaluate_expr(crit.expr, lookup)
    res.missing = sorted(missing)
    res.evidence = sorted(set(res.evidence))
    res.ignored = sorted(set(res.ignored), key=res.ignored.index)
    shown = ", ".join(f"{k} = {v:.4g}" for k, v in res.values.items())
    stale_missing = [m for m in res.missing if m in stale]
    gap = "; ".join([*(f"stale: {m} ({stale[m]})" for m in stale_missing),
                     *(f"no data: {m}" for m in res.missing if m not in stale), *corrupt])
    if ok is None:
        res.outcome = "stale" if stale_missing and not corrupt else "no_data"
        res.reason = gap + (f" (have {shown})" if shown else "")
    else:
        res.outcome = "pass" if ok else "fail"
        res.reason = f"{'holds' if ok else 'fails'}: {crit.expr} with {shown}" + (f"; {gap}" if gap else "")
    if res.ignored:
        res.reason += f"; {len(res.ignored)} record(s) ignored"
    return res


def evaluate_gates(spec: PipelineSpec, ws: Workspace, *, persist_cache: bool = False,
                   full_hash: bool = False) -> dict[str, GateResult]:
    """Verdict of every acceptance criterion of the spec, now.

    ``full_hash`` re-hashes every checkpoint byte (approval, submission);
    ``persist_cache`` lets a caller that owns the workspace keep the hash cache.
    """
    ledger = read_ledger(ws)
    cache = HashCache(ws, persist=persist_cache, full=full_hash)
    out = {name: evaluate_criterion(spec, ws, name, crit, ledger, cache) for name, crit in spec.acceptance.items()}
    cache.save()
    return out


def age_s(result: GateResult) -> float | None:
    return time.time() - result.newest_record_ts if result.newest_record_ts else None


def _canonical_ref(spec: PipelineSpec, ref: str) -> str:
    m = REF_RE.match(ref)
    if m and m.group(1) == "model" and m.group(2) in spec.models and spec.models[m.group(2)].artifact:
        return _canonical_ref(spec, str(spec.models[m.group(2)].artifact))
    return ref


def criterion_benchmarks(crit: Criterion) -> dict[str, set[str]]:
    """Benchmarks the expression reads, per checkpoint alias ("" for a single checkpoint)."""
    refs = [""] if crit.checkpoint else list(crit.checkpoints)
    out: dict[str, set[str]] = {alias: set() for alias in refs}
    for node in ast.walk(ast.parse(crit.expr, mode="eval")):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            try:
                parts = _dotted(node).split(".")
            except ValueError:
                continue
            alias = "" if crit.checkpoint else parts[0]
            if len(parts) == (2 if crit.checkpoint else 3) and alias in out:
                out[alias].add(parts[-2])
    return out


def _measures(kind: str, params: dict[str, Any]) -> str:
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
        want = _canonical_ref(spec, ref)
        if src := spec.ref_stage(want):
            out.add(src)
        for name, entry in spec.stages.items():
            measures = _measures(entry.kind, entry.params)
            if measures in benches[alias] and any(_canonical_ref(spec, r) == want for r in entry.inputs.values()):
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
