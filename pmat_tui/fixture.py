"""Deterministic workspaces for the console's snapshot tests and benchmark.

``write_fixture(root)`` writes a small pipeline with a journal and job logs at fixed
timestamps (``FIXTURE_NOW`` is "now"), covering every status and reason the console
shows. ``write_bench(root, jobs, events)`` generates a large workspace. Both write
the same files a supervisor and its jobs would (a hash-chained journal; results committed
to the chained ledger through ``commit_results`` and listed, sealed, in their job's
``job_finished``, so that gates count them); nothing here runs a process.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from engine.chain import line_digest
from engine.data import protocols
from engine.memory import GIB, GpuInfo, MemorySnapshot
from engine.results import commit_results, make_record, record_key
from engine.sdk.run import params_hash
from engine.workspace import Workspace

T0 = 1_790_000_000.0
FIXTURE_NOW = T0 + 3600.0
FAKE_IDENT = {"pid": 4_000_000, "start_ticks": 1, "boot_id": "fixture"}


def fixture_memory() -> MemorySnapshot:
    """A GB10-like box: 119 GB unified, NVML without device memory."""
    return MemorySnapshot(total=119 * GIB, available=80 * GIB, psi={"some": 0.4, "full": 0.0},
                          gpus=[GpuInfo("NVIDIA GB10", True, None, None, {})])


def _cmd(after: list[str], item: str, hours: float, gb: float, **kw: Any) -> dict[str, Any]:
    return {"kind": "command", "work_item": item, "after": after, "params": {"argv": ["{python}", "-c", "pass"]},
            "memory_gb": gb, "duration_h": hours, **kw}


FIXTURE_SPEC: dict[str, Any] = {
    "name": "fixture",
    "description": "every status the console shows",
    "work_items": {
        "PMAT-001": {"title": "Baseline", "acceptance": ["AC-021", "AC-002"]},
        "PMAT-002": {"title": "Sampling and pairs", "depends_on": ["PMAT-001"]},
        "PMAT-003": {"title": "DPO", "depends_on": ["PMAT-002"], "acceptance": ["AC-020"]},
        "PMAT-004": {"title": "Merge and ship", "depends_on": ["PMAT-003"], "acceptance": ["AC-022"]},
    },
    "stages": {
        "base": {"kind": "tiny_model", "work_item": "PMAT-001", "params": {"hidden_size": 64},
                 "memory_gb": 1, "duration_h": 0.1},
        "eval_base": _cmd(["base"], "PMAT-001", 1.0, 4),
        "sample": _cmd(["eval_base"], "PMAT-002", 10.0, 18.6),
        "sft": _cmd(["base"], "PMAT-002", 2.0, 12),
        "lint": _cmd(["base"], "PMAT-002", 0.2, 1),
        "pairs": _cmd(["sample"], "PMAT-002", 0.5, 2),
        "dpo": _cmd(["pairs", "sft"], "PMAT-003", 4.0, 40, approval="required"),
        "release": _cmd(["eval_base"], "PMAT-001", 0.1, 1, approval="required"),
        "merge": _cmd(["dpo"], "PMAT-004", 1.0, 49),
        "quant": _cmd(["merge"], "PMAT-004", 0.5, 8),
    },
    "acceptance": {
        "AC-020": {"description": "DPO loss falls over training", "work_item": "PMAT-003",
                   "checkpoint": "dpo.output", "expr": "dpo.loss_last < dpo.loss_first"},
        "AC-021": {"description": "baseline HumanEval pass@1 >= 85%", "work_item": "PMAT-001",
                   "checkpoint": "base.model", "expr": "humaneval.pass_at_1 >= 0.85"},
        "AC-022": {"description": "final: HE >= 85, HE+ >= 82, MBPP >= 80", "work_item": "PMAT-004",
                   "checkpoint": "quant.output", "expr": "humaneval.pass_at_1 >= 0.85"},
        "AC-002": {"description": "perplexity within 10% of the reference", "work_item": "PMAT-001",
                   "checkpoint": "eval_base.output", "expr": "perplexity.ratio <= 1.1"},
    },
}


class _Log:
    """Writes one JSONL file with explicit timestamps; ``chained``: each line carries the digest
    of the one before (``prev``), as the supervisor's journal does (engine/chain.py)."""

    def __init__(self, path: Path, *, chained: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "w")  # noqa: SIM115 - closed by close()
        self.prev: str | None = "" if chained else None

    def emit(self, ts: float, event: str, **fields: Any) -> None:
        record = {"ts": round(ts, 3), "kind": event, **fields}
        if self.prev is not None:
            record["prev"] = self.prev
        line = json.dumps(record, separators=(",", ":"))
        if self.prev is not None:
            self.prev = line_digest(line.encode())
        self.fh.write(line + "\n")

    def close(self) -> None:
        self.fh.close()


def _job(ws: Workspace, journal: _Log, stage: str, attempt: int, start: float, *, end: float | None,
         outcome: str | None, total: float, unit: str, step_s: float, done_at_end: float,
         error: str | None = None, metrics: bool = False, rss: int = 2 * GIB, artifact: str = "output",
         records: tuple[dict[str, Any], ...] = (), identity: dict[str, Any] | None = None) -> None:
    """One attempt as the supervisor journals it and the job logs it; ``records`` are committed
    to the ledger at its end the way ``engine.sdk.run`` does (announced, then listed sealed)."""
    job_id = f"{stage}.{attempt}"
    journal.emit(start - 2, "admitted", stage=stage, job_id=job_id, reservation=rss)
    journal.emit(start - 1, "launched", stage=stage, job_id=job_id, attempt=attempt,
                 identity=identity or {**FAKE_IDENT, "executor": "local", "gpus": []}, reservation=rss)
    log = _Log(ws.job_log(job_id))
    log.emit(start, "job_started", job_id=job_id, stage=stage, attempt=attempt,
             params={"argv": ["{python}", "-c", "pass"]}, **FAKE_IDENT)
    stop = end if end is not None else FIXTURE_NOW - 5
    n = max(1, int((stop - start) / step_s))
    for i in range(1, n + 1):
        ts = start + i * step_s
        done = round(done_at_end * i / n)
        log.emit(ts, "progress", done=done, total=total, unit=unit)
        if metrics:  # logged at the trainer's global step, which is the progress count
            loss = 0.693 * math.exp(-i / (n / 2)) + 0.05 * math.sin(i)
            log.emit(ts, "metric", name="loss", value=round(loss, 4), step=done)
            log.emit(ts, "metric", name="rewards/margins", value=round(0.02 * i + 0.03 * math.cos(i), 4), step=done)
        if i % 5 == 0:
            log.emit(ts, "resource", rss=rss - (n - i) * 1000, peak_rss=rss, gpu=None)
    if outcome is not None:
        if outcome == "ok":
            m = ws.manifest(stage, artifact) or {"sha256": "0" * 64, "bytes": 0}
            log.emit(stop, "artifact", name=artifact, path=str(ws.artifact_path(stage, artifact)),
                     sha256=m["sha256"], bytes=m["bytes"])
        params = {"argv": ["{python}", "-c", "pass"]}
        keyed = [{"job_id": job_id, "stage": stage, **r, "key": record_key(stage, "command", params_hash(params), {}, i, r)}
                 for i, r in enumerate(records)]
        results = commit_results(ws, job_id, stage, keyed, lambda e: log.emit(stop, "result", results=e)) if keyed else []
        log.emit(stop, "job_finished", outcome=outcome, error=error, peak_rss=rss, results=results)
        journal.emit(stop + 1, "finished", job_id=job_id, stage=stage, outcome=outcome, error=error, peak_rss=rss)
    log.close()


def humaneval_record(model_hash: str, model_path: Path, passed: int, ts: float) -> dict[str, Any]:
    """A record as the eval stage writes it: the official protocol, its pinned data, every task."""
    proto = protocols.get("humaneval")
    per = {f"HumanEval/{i}": ["passed" if i < passed else "failed"] for i in range(proto.n_tasks)}
    return make_record(benchmark="humaneval", model_hash=model_hash, model_path=model_path,
                       dataset_hash=proto.data_sha256, protocol=proto.as_dict(), metrics={"pass@1": passed / proto.n_tasks},
                       protocol_id=proto.id, protocol_digest=proto.digest(), n_problems=proto.n_tasks, per_problem=per,
                       ts=ts)


def write_fixture(root: Path) -> Workspace:
    """The snapshot tests' workspace: done, running, failed, waiting, gated and pending stages."""
    ws = Workspace(root).init()
    ws.spec_path.write_text(yaml.safe_dump(FIXTURE_SPEC, sort_keys=False))
    hashes = {}
    for stage, name, body in (("base", "model", "tiny model"), ("eval_base", "output", "scores")):
        src = ws.root / "work" / f"{stage}-{name}.txt"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(body)
        hashes[stage] = ws.publish(stage, name, src)["sha256"]
    evals = (humaneval_record(hashes["base"], ws.artifact_path("base", "model"), 143, T0 + 575),  # 87.2%: passes
             make_record(benchmark="perplexity", model_hash=hashes["eval_base"],  # 1.23 > 1.1: fails
                         model_path=ws.artifact_path("eval_base", "output"), dataset_hash=None, protocol={},
                         metrics={"ratio": 1.23}, ts=T0 + 578))
    j = _Log(ws.journal_path, chained=True)
    j.emit(T0, "supervisor_started", **FAKE_IDENT)
    for s in ("base", "eval_base", "sample", "sft", "lint", "pairs", "dpo", "release"):
        j.emit(T0 + 1, "queued", stage=s, reason="requested by fixture")
    _job(ws, j, "base", 1, T0 + 10, end=T0 + 70, outcome="ok", total=2, unit="steps", step_s=20, done_at_end=2,
         artifact="model")
    _job(ws, j, "eval_base", 1, T0 + 80, end=T0 + 580, outcome="ok", total=164, unit="problems", step_s=25,
         done_at_end=164, records=evals)
    _job(ws, j, "lint", 1, T0 + 80, end=T0 + 200, outcome="failed", total=10, unit="files", step_s=30,
         done_at_end=4, error="command python exited with status 1")
    _job(ws, j, "sft", 1, T0 + 90, end=None, outcome=None, total=400, unit="steps", step_s=60,
         done_at_end=310, metrics=True, rss=11 * GIB)
    _job(ws, j, "sample", 1, T0 + 600, end=None, outcome=None, total=1000, unit="prompts", step_s=30,
         done_at_end=600, rss=int(18.6 * GIB),
         identity={"executor": "slurm", "slurm_id": "41", "submitted_at": T0 + 599, "gpus": [0]})
    j.emit(T0 + 620, "executor_state", job_id="sample.1", state="RUNNING on node3")
    j.emit(T0 + 600, "waiting", stage="pairs", reason="waiting on sample")
    j.emit(T0 + 600, "waiting", stage="dpo", reason="waiting on pairs, sft")
    j.emit(T0 + 600, "waiting", stage="release", reason="needs approval")
    j.close()
    return ws


def write_bench(root: Path, jobs: int = 200, events: int = 100_000, running: int = 3) -> Workspace:
    """A large workspace: ``jobs`` stages in chains of 10 per work item, ``events`` job events in all."""
    ws = Workspace(root).init()
    items = {f"W-{i:03d}": {"title": f"work item {i}"} for i in range(math.ceil(jobs / 10))}
    stages: dict[str, Any] = {}
    for k in range(jobs):
        item = f"W-{k // 10:03d}"
        after = [f"s{k - 1:03d}"] if k % 10 else []
        stages[f"s{k:03d}"] = _cmd(after, item, 1.0 + k % 7, 1 + k % 5)
    ws.spec_path.write_text(yaml.safe_dump({"name": "bench", "work_items": items, "stages": stages}, sort_keys=False))
    per_job = events // jobs
    j = _Log(ws.journal_path, chained=True)
    j.emit(T0, "supervisor_started", **FAKE_IDENT)
    for s in stages:
        j.emit(T0 + 1, "queued", stage=s, reason="requested by bench")
    for k, s in enumerate(stages):
        live = k >= jobs - running
        _job(ws, j, s, 1, T0 + 10, end=None if live else T0 + 10 + per_job, outcome=None if live else "ok",
             total=per_job, unit="items", step_s=(FIXTURE_NOW - 20 - T0) / per_job if live else 1.0,
             done_at_end=per_job - (per_job // 2 if live else 0))
    j.close()
    return ws


def write_finished_demo(root: Path, spec_path: Path) -> Workspace:
    """A workspace of ``spec_path`` (e.g. the demo pipeline) whose every stage ran once: training
    stages with a loss and a margin per step, the rest with progress and resource ticks."""
    ws = Workspace(root).init()
    ws.spec_path.write_text(spec_path.read_text())
    stages = yaml.safe_load(spec_path.read_text())["stages"]
    j = _Log(ws.journal_path, chained=True)
    j.emit(T0, "supervisor_started", **FAKE_IDENT)
    t = T0 + 10
    for stage, entry in stages.items():
        j.emit(T0 + 1, "queued", stage=stage, reason="requested by fixture")
        train = entry.get("kind") in ("sft", "dpo", "distill")
        _job(ws, j, stage, 1, t, end=t + 60, outcome="ok", total=40, unit="steps", step_s=1.5, done_at_end=40,
             metrics=train)
        t += 61
    j.close()
    return ws
