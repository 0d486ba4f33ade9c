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
from engine.criteria import criterion_protocol, dotted, measures
from engine.data import protocols
from engine.refs import resolve_ref
from engine.results import incomparable, read_ledger, short_diff
from engine.spec import Criterion, PipelineSpec
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
            return lookup(dotted(node))
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
    want, out = spec.canonical_ref(ref), []
    for entry in spec.stages.values():
        params = entry.params
        if entry.kind != "eval" or measures(entry.kind, params) != bench or not any(
                spec.canonical_ref(r) == want for r in entry.inputs.values()):
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
