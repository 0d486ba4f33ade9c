"""Acceptance gates: expressions over results of the checkpoint they name, and nothing else.

A criterion's names are benchmarks (``humaneval.pass_at_1``) of its checkpoint, or
aliases of several checkpoints (``fp16.humaneval.pass_at_1``). Only ledger records
whose ``model_hash`` is the checkpoint's current content hash count (and whose
protocol contains the criterion's ``protocol`` when it sets one): a result of
another model, however good, never satisfies a gate. Outcomes: pass, fail,
no_data, stale (records exist only for an older version of that checkpoint).
"""

from __future__ import annotations

import ast
import json
import operator
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.events import read_events
from engine.refs import resolve_ref
from engine.spec import REF_RE, Criterion, PipelineSpec
from engine.workspace import Workspace, atomic_write_json, content_hash


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
    evidence: list[str] = field(default_factory=list)  # ledger record ids
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


class HashCache:
    """Content hashes of user paths, keyed by a size/mtime fingerprint, kept in the workspace
    (in memory only when ``persist`` is off: a read-only console writes nothing)."""

    def __init__(self, ws: Workspace, *, persist: bool = True) -> None:
        self.path = ws.root / "state" / "hash-cache.json"
        self.persist = persist
        try:
            self.data: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def get(self, path: Path) -> str:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        fp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        hit = self.data.get(str(path))
        if hit and hit["fp"] == [list(x) for x in fp]:
            return hit["hash"]
        h = content_hash(path)
        self.data[str(path)] = {"fp": fp, "hash": h}
        if self.persist:
            atomic_write_json(self.path, self.data)
        return h


def checkpoint_hash(spec: PipelineSpec, ws: Workspace, ref: str, cache: HashCache) -> str | None:
    """Current content hash of a checkpoint reference (None if it does not exist yet)."""
    m = REF_RE.match(ref)
    if m and m.group(1) == "model" and spec.models[m.group(2)].artifact:
        return checkpoint_hash(spec, ws, spec.models[m.group(2)].artifact, cache)
    if m and m.group(3):
        manifest = ws.manifest(m.group(3), m.group(4))
        return manifest["sha256"] if manifest else None
    path = Path(resolve_ref(spec, ws, ref, ws.spec_path.parent))
    return cache.get(path) if path.exists() else None


def read_ledger(ws: Workspace) -> list[dict[str, Any]]:
    """Ledger records, each with an ``id`` (its line number) for evidence."""
    out = []
    for i, rec in enumerate(read_events(ws.ledger_path), start=1):
        out.append({"id": rec.get("id") or f"ledger:{i}", **rec})
    return out


def _protocol_matches(record: dict[str, Any], want: dict[str, Any]) -> bool:
    proto = record.get("protocol") or {}
    return all(proto.get(k) == v for k, v in want.items())


def evaluate_criterion(spec: PipelineSpec, ws: Workspace, name: str, crit: Criterion,
                       ledger: list[dict[str, Any]], cache: HashCache) -> GateResult:
    refs = {"": crit.checkpoint} if crit.checkpoint else dict(crit.checkpoints)
    hashes = {alias: checkpoint_hash(spec, ws, ref, cache) for alias, ref in refs.items()}
    paths = {alias: resolve_ref(spec, ws, ref, ws.spec_path.parent) for alias, ref in refs.items()}
    res = GateResult(name, "no_data", crit.expr, crit.description, checkpoints=hashes)
    want = crit.protocol
    stale: set[str] = set()
    missing: set[str] = set()

    def lookup(dotted: str) -> float | None:
        parts = dotted.split(".")
        alias = "" if crit.checkpoint else parts.pop(0)
        if alias not in refs or len(parts) != 2:
            raise ValueError(f"{name}: name {dotted!r} is not CHECKPOINT.BENCHMARK.METRIC")
        bench, metric = parts
        h = hashes[alias]
        recs = [r for r in ledger if r.get("benchmark") == bench and _protocol_matches(r, want)]
        mine = [r for r in recs if h is not None and r.get("model_hash") == h
                and any(metric_key(k) == metric for k in (r.get("metrics") or {}))]
        if not mine:
            if any(r.get("model_path") == paths[alias] for r in recs):
                stale.add(dotted)
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
    shown = ", ".join(f"{k} = {v:.4g}" for k, v in res.values.items())
    gap = f"{'stale' if stale else 'no data'}: {', '.join(res.missing)}"
    if ok is None:
        res.outcome = "stale" if stale else "no_data"
        res.reason = gap + (f" (have {shown})" if shown else "")
    else:
        res.outcome = "pass" if ok else "fail"
        res.reason = f"{'holds' if ok else 'fails'}: {crit.expr} with {shown}" + (f"; {gap}" if missing else "")
    return res


def evaluate_gates(spec: PipelineSpec, ws: Workspace, *, persist_cache: bool = True) -> dict[str, GateResult]:
    """Verdict of every acceptance criterion of the spec, now."""
    ledger = read_ledger(ws)
    cache = HashCache(ws, persist=persist_cache)
    return {name: evaluate_criterion(spec, ws, name, crit, ledger, cache) for name, crit in spec.acceptance.items()}


def age_s(result: GateResult) -> float | None:
    return time.time() - result.newest_record_ts if result.newest_record_ts else None
