"""Result records and the append-only results ledger reader (pass@k: engine/data/passk.py).

A record is keyed by what it measured: the model's content hash, the dataset hash and
the protocol (everything that changes the number). Gates and every other reader read
records through ``read_ledger``, the validating reader; gate evaluation itself lives elsewhere.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.chain import append_chained, line_digest, seal, sealed, user_key, verify_chain
from engine.data.passk import pass_metrics
from engine.data.protocols import Protocol, digest_of
from engine.data.protocols import diff as protocol_diff
from engine.events import read_events
from engine.jsonl import complete_lines, last_line, parse
from engine.workspace import Workspace, ensure_dir


def make_record(*, benchmark: str, model_hash: str | None, model_path: str | Path | None,
                dataset_hash: str | None, protocol: dict[str, Any], metrics: dict[str, float],
                **extra: Any) -> dict[str, Any]:
    """A ledger record, refused (ValueError) where readers would ignore it (``malformed``)."""
    rec = {"benchmark": benchmark, "model_hash": model_hash,
           "model_path": str(model_path) if model_path is not None else None,
           "dataset_hash": dataset_hash, "protocol": dict(protocol), "metrics": metrics, **extra}
    if why := malformed(rec):
        raise ValueError(f"result {benchmark!r}: {why}: {metrics}")
    return {**rec, "metrics": {k: float(v) for k, v in metrics.items()}}


# -- exactly-once commit ------------------------------------------------------------------
# A stage's records are held until its job ends; then, under the ledger lock, each is
# appended (or an existing line with the same key is adopted) and its digest announced in
# the job's log first; ``job_finished`` then lists the digests. A record counts only
# once a ``job_finished`` of a job of this workspace lists it, so a kill at any instant
# leaves nothing that counts or everything, and a resumed or re-run job adopts the line
# its earlier attempt wrote instead of adding a second one.

VOLATILE_KEYS = frozenset({"job_id", "ts", "prev", "wall_s", "seconds"})


def record_key(stage: str, kind: str, params_hash: str, inputs: dict[str, str], seq: int,
               record: dict[str, Any]) -> str:
    """Identity of a record: its job's stage, parameters and inputs, and what it measured."""
    ident = {"stage": stage, "kind": kind, "params_hash": params_hash, "inputs": inputs, "seq": seq,
             **{k: record.get(k) for k in ("benchmark", "model_hash", "dataset_hash", "protocol")}}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def _content(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in VOLATILE_KEYS}


@contextmanager
def _ledger_lock(ws: Workspace) -> Iterator[None]:
    fd = os.open(ensure_dir(ws.ledger_path.parent) / ".ledger.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def announced_digests(ws: Workspace, stage: str) -> set[str]:
    """Ledger digests the jobs of ``stage`` announced (``result`` events of their logs)."""
    out: set[str] = set()
    for log in sorted((ws.logs_dir / "jobs").glob(f"{stage}.*.jsonl")):
        out.update(e.get("digest") for e in read_events(log) if e.get("kind") == "result")
    return out


def commit_results(ws: Workspace, job_id: str, stage: str, records: list[dict[str, Any]],
                   announce: Callable[[list[dict[str, str]]], None]) -> list[dict[str, str]]:
    """Append ``records`` (each with its ``key``) exactly once; returns ``[{key, digest, seal}]``
    for the job's ``job_finished`` (the seal binds the digest to ``job_id`` under the user's key).

    A line already in the ledger with the same key is adopted when this stage announced
    it (an earlier attempt killed before its ``job_finished``) or when it says the same
    thing (a re-run after the job log was lost); anything else under that key (a line
    written by hand) is not adopted and never counts.
    """
    with _ledger_lock(ws):
        chain = verify_chain(ws.ledger_path)
        announced = announced_digests(ws, stage)
        by_key: dict[str, list[tuple[dict[str, Any], str]]] = {}
        for rec, digest in zip(chain.records, chain.digests, strict=True):
            by_key.setdefault(str(rec.get("key")), []).append((rec, digest))
        out, new = [], []
        for rec in records:
            old = next((d for r, d in by_key.get(rec["key"], []) if d in announced or _content(r) == _content(rec)), None)
            out.append({"key": rec["key"], "digest": old})
            if old is None:
                new.append(rec)

        def before_write(digests: list[str]) -> None:
            announce([{"key": r["key"], "digest": d} for r, d in zip(new, digests, strict=True)])

        written = iter(append_chained(ws.ledger_path, new, before_write) if new else [])
    done = [{"key": e["key"], "digest": e["digest"] or next(written)} for e in out]
    return [{**e, "seal": seal(job_id, e["key"], e["digest"])} for e in done]


# -- provenance -----------------------------------------------------------------------------


def journal_jobs(ws: Workspace) -> set[str]:
    """Job ids launched by the intact part of the workspace's (hash-chained) journal."""
    return {str(e.get("job_id")) for e in verify_chain(ws.journal_path).records if e.get("kind") == "launched"}


def committed_digests(ws: Workspace) -> dict[str, str]:
    """Ledger digest -> the launched job whose ``job_finished`` lists it, sealed."""
    out: dict[str, str] = {}
    key = user_key(create=False)
    for job_id in sorted(journal_jobs(ws)):
        end = parse(last_line(ws.job_log(job_id)))
        if isinstance(end, dict) and end.get("kind") == "job_finished":
            for entry in end.get("results") or []:
                if isinstance(entry, dict) and sealed(entry.get("seal"), job_id, str(entry.get("key")),
                                                       str(entry.get("digest")), key=key):
                    out[entry["digest"]] = job_id
    return out


def malformed(rec: dict[str, Any]) -> str | None:
    """Why a ledger line is not a record readers can use (None when it is one)."""
    metrics = rec.get("metrics")
    if not isinstance(rec.get("benchmark"), str) or not isinstance(metrics, dict):
        return "malformed record (no benchmark or metrics)"
    if not all(isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) for k, v in metrics.items()):
        return "malformed record (metrics must be numbers by name)"
    if not isinstance(rec.get("model_hash"), str | None) or not isinstance(rec.get("model_path"), str | None):
        return "malformed record (model_hash/model_path)"
    return None


def read_ledger(workspace: Workspace | Path) -> list[dict[str, Any]]:
    """The one ledger reader: every record line with ``id`` (ledger:LINE), ``digest`` and ``ignored``.

    ``ignored`` is None for a record with provenance (committed by a launched job of this
    workspace, in the intact part of the chain) and otherwise says why it does not count.
    Lines that are no record (``malformed``) are left out; so is a torn last line.
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    chain = verify_chain(ws.ledger_path)
    committed = committed_digests(ws)
    out = []
    for rec, line, digest in zip(chain.records, chain.lines, chain.digests, strict=True):
        why = malformed(rec) or (None if digest in committed else
                                 "not committed by a job of this workspace (edited or written by hand)")
        out.append({**rec, "id": f"ledger:{line}", "digest": digest, "ignored": why})
    if chain.broken_line is not None:
        tail = complete_lines(ws.ledger_path.read_bytes())[chain.broken_line - 1:]
        for line, raw in enumerate(tail, start=chain.broken_line):
            rec = parse(raw)
            if isinstance(rec, dict) and not malformed(rec):
                out.append({**rec, "id": f"ledger:{line}", "digest": line_digest(raw),
                            "ignored": f"after the break of the ledger's chain at line {chain.broken_line} "
                                       "(`pmat verify --accept` once checked)"})
    return out


# -- comparability with a criterion's protocol ------------------------------------------------

def sample_passed(sample: Any) -> bool:
    """A sample's outcome: a status string, or a dict with ``status`` or ``base``/``plus``."""
    if isinstance(sample, str):
        return sample == "passed"
    if isinstance(sample, dict):
        if "status" in sample:
            return sample["status"] == "passed"
        return sample.get("base") == "passed" and sample.get("plus", "passed") == "passed"
    return False


def short_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``protocols.diff`` lines with sha256 values cut to 12 digits (readable in one line)."""
    return [re.sub(r"\b([0-9a-f]{12})[0-9a-f]{52}\b", r"\1", line) for line in protocol_diff(old, new)]


def incomparable(record: dict[str, Any], proto: Protocol) -> tuple[str, str] | None:
    """Why a record cannot stand for ``proto`` (kind, reason), or None when it can.

    Kinds: "protocol" (another protocol: the record is stale for this criterion), "data"
    (not the pinned dataset), "coverage" (not the whole task set), "summary" (its
    numbers do not recompute from its per-problem outcomes).
    """
    want = proto.as_dict()
    have = record.get("protocol") if isinstance(record.get("protocol"), dict) else {}
    if record.get("protocol_id") != proto.id:
        return "protocol", f"protocol {record.get('protocol_id')!r} is not {proto.id!r}"
    if record.get("protocol_digest") != proto.digest() or digest_of(have) != proto.digest():
        return "protocol", f"protocol differs: {'; '.join(short_diff(have, want)) or 'digest'}"
    if not isinstance(record.get("dataset_hash"), str) or not proto.accepts_data(record["dataset_hash"]):
        return "data", f"dataset sha256 {str(record.get('dataset_hash'))[:12]} is not the pinned {str(proto.data_sha256)[:12]}"
    per = record.get("per_problem") or record.get("eval")  # {task: [sample outcome, ...]}
    if not isinstance(per, dict) or not all(isinstance(v, list) for v in per.values()):
        return "coverage", "no per-problem outcomes"
    if len(per) != proto.n_tasks or record.get("n_problems") != proto.n_tasks:
        return "coverage", f"{len(per)} of {proto.n_tasks} tasks"
    if any(len(v) != proto.n for v in per.values()):
        return "coverage", f"not {proto.n} sample(s) for every task"
    counts = [(len(v), sum(sample_passed(s) for s in v)) for v in per.values()]
    metrics = record.get("metrics") or {}
    ks = [int(k[5:]) for k in metrics if k.startswith("pass@") and k[5:].isdigit()]
    again = pass_metrics(counts, ks)
    for name in sorted(metrics):
        if name.startswith("pass@") and (name not in again or abs(again[name] - float(metrics[name])) > 1e-9):
            return "summary", (f"{name} {metrics[name]} does not recompute from its per-problem outcomes "
                               f"({again.get(name)})")
    return None
