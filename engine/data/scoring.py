"""Score solutions under a protocol: the one path of the eval stage and ``pmat score``.

A ``Benchmark`` is a protocol's data file, verified against the pin (or explicitly
unpinned, which the effective protocol then says), cut to the protocol's task set. Each
sample's solution (evalplus's convention: ``solution``, or the task prompt + ``completion``)
runs in the sandbox under the protocol's tests: HumanEval's ``check``, MBPP's asserts, or
evalplus's base and plus input suites, each in a run of its own. Verdicts come back per
task and sample in evalplus's words (``pass``/``fail`` for base and plus) with pmat's
category beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.data import evalplus, humaneval, mbpp, protocols
from engine.data.fetch import check_file
from engine.data.humaneval import Problem
from engine.data.passk import pass_metrics
from engine.data.pins import pin_for
from engine.data.protocols import Protocol
from engine.sandbox.pool import Job, Limits, SandboxPool, Verdict
from engine.workspace import sha256_file

KS = (1, 10, 100)


@dataclass(frozen=True)
class Task:
    """One task of a benchmark: the task prompt (what a model completes or is asked) and its tests."""

    task_id: str
    prompt: str
    entry_point: str
    problem: Problem | None = None           # HumanEval check / MBPP asserts
    plus: evalplus.PlusTask | None = None    # evalplus records


@dataclass
class Benchmark:
    protocol: Protocol                       # the effective protocol (data pin and overrides applied)
    path: Path
    sha256: str
    tasks: list[Task]
    expected: dict[str, dict] = field(default_factory=dict)  # evalplus: reference outputs and times

    def by_id(self) -> dict[str, Task]:
        return {t.task_id: t for t in self.tasks}


def _mbpp_tasks(path: Path, lo: int, hi: int) -> list[Task]:
    tasks = []
    for p in mbpp.problems_of(path, lo, hi):
        asserts = "\n".join(mbpp.tests_of(p)["asserts"])
        prompt = protocols.MBPP_TASK.format(text=p.text, entry_point=p.entry_point, asserts=asserts)
        tasks.append(Task(p.task_id, prompt, p.entry_point, problem=p))
    return tasks


def open_benchmark(protocol_id: str, path: Path, *, data_sha256: str | None = None, unpinned: bool = False,
                   overrides: dict[str, Any] | None = None, limit: int | None = None) -> Benchmark:
    """Load ``path`` as the data of ``protocol_id``: it must match the project's pin, or
    ``data_sha256`` (a user pin), unless ``unpinned``. ``limit`` keeps the first tasks (which
    the effective protocol's ``n_tasks`` then says)."""
    proto = protocols.get(protocol_id)
    path = Path(path)
    if path.is_dir():  # a data directory: the pinned file's name in it (MBPP's mbpp.jsonl)
        path = path / pin_for(proto.dataset).filename
    if unpinned:
        if not path.is_file():
            raise ValueError(f"{protocol_id}: data file {path} does not exist")
        digest = sha256_file(path)
    else:
        digest = check_file(path, proto.dataset, data_sha256).sha256
    if proto.tests == "check":
        problems, _ = humaneval.load(path)
        tasks = [Task(p.task_id, p.prompt, p.entry_point, problem=p) for p in problems]
    elif proto.tests == "asserts":
        tasks = _mbpp_tasks(path, *(proto.task_range() or (1, 10**9)))
    else:
        plus = evalplus.load(path, mbpp=proto.dataset == "mbpp_plus")
        tasks = [Task(t.task_id, t.prompt, t.entry_point, plus=t) for t in plus]
    official = proto.accepts_data(digest)
    if official and len(tasks) != proto.n_tasks:
        raise ValueError(f"{path}: {len(tasks)} tasks, protocol {protocol_id} has {proto.n_tasks}")
    tasks = tasks[:limit] if limit else tasks
    changes = dict(overrides or {})
    if len(tasks) != proto.n_tasks:
        changes["n_tasks"] = len(tasks)
    proto = protocols.resolve(protocol_id, data_sha256=digest, overrides=changes)
    bench = Benchmark(proto, path, digest, tasks)
    if proto.tests == "evalplus":
        bench.expected = evalplus.ground_truth([t.plus for t in tasks if t.plus], digest,
                                               mbpp=proto.dataset == "mbpp_plus")
    return bench


def solution_of(task: Task, sample: dict[str, Any]) -> str:
    """evalplus's rule: the sample's ``solution``, else the task prompt followed by its ``completion``."""
    if isinstance(sample.get("solution"), str):
        return sample["solution"]
    if isinstance(sample.get("completion"), str):
        return task.prompt + sample["completion"]
    raise ValueError(f"sample of {task.task_id} has neither a 'solution' nor a 'completion' string")


def jobs_for(bench: Benchmark, task: Task, solution: str) -> list[tuple[str, Job]]:
    """(suite, job) pairs: one for HumanEval / MBPP, base and plus for evalplus."""
    p = bench.protocol
    if p.tests == "check":
        return [("base", humaneval.solution_job(task.problem, solution, p.task_timeout_s))]  # type: ignore[arg-type]
    if p.tests == "asserts":
        return [("base", mbpp.make_job(task.problem, solution, p.task_timeout_s))]  # type: ignore[arg-type]
    suites = ("base", "plus") if p.plus else ("base",)
    return [(s, evalplus.make_job(task.plus, solution, s, bench.expected[task.task_id],  # type: ignore[arg-type]
                                  mbpp=p.dataset == "mbpp_plus", min_time_s=p.min_time_limit_s,
                                  time_factor=p.gt_time_factor, task_timeout_s=p.task_timeout_s))
            for s in suites]


def evalplus_status(v: Verdict, job: Job) -> str:
    """The verdict in evalplus's words: "timeout" where evalplus's process would never report back
    (the program's process died, as with ``os._exit``, or the whole run's clock ran out, as with a
    hang while loading), "fail" for every other failure (a late input is interrupted there)."""
    if v.passed:
        return "pass"
    if v.error_type == "EarlyExit" or v.status == "timeout" and (v.wall_s == 0 or v.wall_s >= job.timeout - 0.25):
        return "timeout"
    return "fail"


def _suite(v: Verdict, job: Job) -> dict[str, Any]:
    return {"status": evalplus_status(v, job), "pmat": v.status, "error_type": v.error_type, "detail": v.detail[-300:]}


def score(bench: Benchmark, samples: list[tuple[str, str]], pool: SandboxPool,
          on_result: Callable[[int, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """One verdict per (task_id, solution): ``base_status``/``plus_status`` ("pass", "fail" or "timeout";
    plus None without plus inputs), ``status`` (pmat's category of the first failing suite, else "passed")."""
    tasks = bench.by_id()
    jobs: list[Job] = []
    owners: list[tuple[int, str]] = []
    for i, (task_id, solution) in enumerate(samples):
        for suite, job in jobs_for(bench, tasks[task_id], solution):
            jobs.append(job)
            owners.append((i, suite))
    verdicts = pool.run_many(jobs)
    out: list[dict[str, Any]] = [{"task_id": t, "base": None, "plus": None} for t, _ in samples]
    for (i, suite), job, v in zip(owners, jobs, verdicts, strict=True):
        out[i][suite] = _suite(v, job)
    for i, rec in enumerate(out):
        suites = [rec[s] for s in ("base", "plus") if rec[s]]
        rec["base_status"] = rec["base"]["status"]
        rec["plus_status"] = rec["plus"]["status"] if rec["plus"] else None
        failed = [s for s in suites if s["status"] != "pass"]
        rec["status"] = failed[0]["pmat"] if failed else "passed"
        if on_result:
            on_result(i, rec)
    return out


def metrics(bench: Benchmark, per_task: dict[str, list[dict[str, Any]]], ks: Iterable[int] = KS) -> dict[str, float]:
    """pass@k over the tasks scored (a sample counts when every suite passed: evalplus's "plus" figure);
    with plus inputs also ``base_pass@k`` (evalplus's base-tests figure)."""
    counts = [(len(v), sum(s["status"] == "passed" for s in v)) for v in per_task.values()]
    out = pass_metrics(counts, ks)
    if bench.protocol.plus:
        base = [(len(v), sum(s["base_status"] == "pass" for s in v)) for v in per_task.values()]
        out.update({f"base_{k}": v for k, v in pass_metrics(base, ks).items()})
    return out


def pool_limits(protocol: Protocol, memory_mb: int) -> Limits:
    """The sandbox limits for a protocol: CPU seconds beyond any job's wall clock."""
    return Limits(memory_mb=memory_mb, cpu_s=int(protocol.task_timeout_s) + 5)


def read_samples(path: Path) -> list[dict[str, Any]]:
    """evalplus's samples: a JSONL file (or ``.jsonl.gz``), one object a line with ``task_id`` and
    ``solution`` or ``completion``; or a directory of ``<task_id with / as _>/<n>.py`` solutions."""
    path = Path(path)
    if path.is_dir():
        return [{"task_id": d.name.replace("_", "/"), "solution": f.read_text(encoding="utf-8")}
                for d in sorted(path.iterdir()) if d.is_dir()
                for f in sorted(d.glob("*.py"), key=lambda f: (len(f.stem), f.stem))]
    samples = []
    for lineno, s in evalplus.jsonl_objects(path, "samples file"):
        if not isinstance(s.get("task_id"), str):
            raise ValueError(f"{path}:{lineno}: a sample needs a string 'task_id'")
        if not isinstance(s.get("solution", s.get("completion")), str):
            raise ValueError(f"{path}:{lineno}: sample of {s['task_id']} needs a 'solution' or 'completion' string")
        samples.append(s)
    return samples


def report(bench: Benchmark, per_task: dict[str, list[dict[str, Any]]], ks: Iterable[int] = KS,
           **extra: Any) -> dict[str, Any]:
    """The scored samples as ``pmat score`` writes them and the eval stage records them: the effective
    protocol and its digest, the data's sha256, evalplus-style ``eval`` verdicts, pass@k."""
    p = bench.protocol
    return {"protocol_id": p.id, "protocol_digest": p.digest(), "protocol": p.as_dict(),
            "dataset_hash": bench.sha256, "data_path": str(bench.path), "data_pinned_by": p.data_pinned_by,
            "n_problems": len(per_task), "missing_tasks": [t.task_id for t in bench.tasks if t.task_id not in per_task],
            "metrics": metrics(bench, per_task, ks), "eval": per_task, **extra}


def score_lines(records: list[dict[str, Any]]) -> list[str]:
    """One line per evaluation in a ledger (the last record of each stage): benchmark, protocol,
    pass@1 (and the base-tests figure for plus protocols), whose data, which backend. Both MBPP
    flavours show: ``mbpp`` (mbpp_leaderboard) and ``mbpp_plus`` (evalplus)."""
    last: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec.get("protocol_id"):
            last[str(rec.get("stage", "?"))] = rec
    lines = []
    for stage, rec in last.items():
        m = rec.get("metrics", {})
        base = f" base {m['base_pass@1']:.3f}" if "base_pass@1" in m else ""
        data = "pinned data" if rec.get("data_pinned_by") == "project" else "user-pinned data (not the release)"
        lines.append(f"{stage:<24} {rec['benchmark']:<15} {rec['protocol_id']:<17} pass@1 {m.get('pass@1', 0):.3f}"
                     f"{base}  {rec.get('n_problems')} tasks, {data}, {rec.get('backend')}")
    return lines
