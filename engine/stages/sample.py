"""Stage `sample`: N completions per training prompt, executed in the sandbox, resumable.

Units of ``unit_prompts`` prompts (planned from the whole set, by prompt length) are
generated one after another; each finished unit is appended to ``work/gen.jsonl`` in one
write and fsynced, so a kill -9 loses at most the unit in flight. A resumed attempt skips
exactly the (task, sample) pairs found there (a unit torn mid-write runs again whole).
Sample j of task t is drawn from its own random stream (seed, t, j), and a unit is always
batched the same way, so a resumed run writes the same samples as an uninterrupted one.
Verdicts come from a sandbox thread that runs while the next unit generates.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from engine.data import mbpp, postprocess, prompts
from engine.data.humaneval import Problem
from engine.data.mbpp import EVAL_SPLITS
from engine.gen.base import GenRequest
from engine.gen.batch import SAMPLING_KEYS, generate_units, in_units, seeded_request
from engine.gen.memory import sampling_bytes
from engine.gen.parallel import load_engines
from engine.jsonl import append_jsonl, read_objects
from engine.sdk.base import StageContext, StageFailed, StageParams
from engine.workspace import atomic_write_json, content_hash, ensure_dir


class Params(StageParams):
    n: int = Field(ge=1)                    # samples per prompt
    temperature: float = Field(ge=0)
    top_p: float = Field(gt=0, le=1)
    top_k: int = Field(ge=0)                # 0: no top-k
    max_new_tokens: int = Field(ge=1)
    seed: int
    strategy: str                           # engine.data.prompts strategy: asserts | standard | few-shot
    data_path: str                          # directory holding mbpp.jsonl
    splits: tuple[str, ...] = ("train", "validation")
    allow_eval_split: bool = False          # the explicit, recorded override for test/prompt splits
    limit: int | None = None                # first K problems by task id (demo pipelines, tests)
    unit_prompts: int = Field(default=64, ge=1)  # prompts per appended, fsynced unit (a kill loses one)
    max_rows: int = Field(default=256, ge=1)     # concurrent sequences in the sampler
    backend: str = "transformers"
    dtype: str = "auto"
    exec_timeout_s: float = 10.0
    exec_workers: int | None = None


INPUTS = {"model": "HF checkpoint dir (tokenizer with chat template)"}
OUTPUTS = {"samples": "dir: samples.jsonl (one record per task x sample, verdict included), "
                      "problems.jsonl (the problems used), meta.json"}


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    return sampling_bytes(Path(inputs["model"]), min(params.max_rows, params.unit_prompts * params.n),
                          1024 + params.max_new_tokens, params.dtype)


def load_problems(params: Params) -> tuple[list[Problem], dict[str, str], str]:
    """The problems of the configured splits (eval splits refused unless overridden)."""
    bad = sorted(set(params.splits) & EVAL_SPLITS)
    if bad and not params.allow_eval_split:
        raise StageFailed(f"sample: splits {bad} are evaluation data; set allow_eval_split: true to override")
    problems: list[Problem] = []
    split_of: dict[str, str] = {}
    digest = ""
    for split in params.splits:
        got, digest = mbpp.load(Path(params.data_path), split)
        for p in got:
            split_of[p.task_id] = split
        problems += got
    problems.sort(key=lambda p: int(p.task_id.rsplit("/", 1)[-1]))
    if params.limit is not None:
        problems = problems[: params.limit]
    return problems, split_of, digest


class Executor(threading.Thread):
    """Runs queued samples through the sandbox pool and appends their verdicts (fsynced)."""

    def __init__(self, path: Path, problems: dict[str, Problem], params: Params) -> None:
        super().__init__(daemon=True)
        self.path, self.problems, self.params = path, problems, params
        self.inbox: queue.Queue[list[dict[str, Any]] | None] = queue.Queue()
        self.error: BaseException | None = None
        self.abort = threading.Event()  # set when the stage stops early: queued batches are dropped

    def run(self) -> None:
        from engine.sandbox.pool import Limits, SandboxPool

        try:
            with SandboxPool(workers=self.params.exec_workers, limits=Limits()) as pool:
                while (batch := self.inbox.get()) is not None and not self.abort.is_set():
                    jobs = [mbpp.make_job(self.problems[s["task_id"]], s["code"], self.params.exec_timeout_s)
                            for s in batch]
                    verdicts = pool.run_many(jobs)
                    append_jsonl(self.path, sort_keys=True, records=[
                        {"task_id": s["task_id"], "sample": s["sample"], "status": v.status,
                         "error_type": v.error_type, "blocked_op": v.blocked_op}
                        for s, v in zip(batch, verdicts, strict=True)])
        except BaseException as exc:  # noqa: BLE001 - surfaced by the stage after join
            self.error = exc


def run(ctx: StageContext, params: Params) -> None:
    problems, split_of, data_hash = load_problems(params)
    if not problems:
        raise StageFailed(f"sample: no problems in splits {list(params.splits)} of {params.data_path}")
    overridden = sorted(set(params.splits) & EVAL_SPLITS)
    if overridden:
        ctx.warning(f"sample: evaluation splits {overridden} used by explicit override (allow_eval_split)",
                    override=overridden)
    backend = load_engines(ctx.inputs["model"], params.backend, device=ctx.device, dtype=params.dtype,
                           engines=ctx.job.gpus, cache_dir=ctx.work_dir / "shards")
    if hasattr(backend, "max_rows"):
        backend.max_rows = params.max_rows
    ctx.events.emit("backend", name=backend.name, device=backend.device)
    by_id = {p.task_id: p for p in problems}
    shots = mbpp.load(Path(params.data_path), "prompt")[0][1:4] if params.strategy == "few-shot" else None
    try:
        built = {p.task_id: prompts.build("mbpp", p, params.strategy, backend.tokenizer, shots) for p in problems}
    except ValueError as exc:
        raise StageFailed(f"sample: strategy {params.strategy!r}: {exc}") from None
    sent = {t: b.text for t, b in built.items()}

    # Units are planned from the whole problem set, so a resumed run batches exactly as the
    # first one did: same rows together, same numerics, the same samples.
    order = sorted(problems, key=lambda p: (len(backend.encode(sent[p.task_id])), int(p.task_id.split("/")[-1])))
    units = in_units(order, params.unit_prompts)
    gen_path, verdict_path = ctx.work_dir / "gen.jsonl", ctx.work_dir / "verdicts.jsonl"
    ensure_dir(ctx.work_dir)
    done = {(r["task_id"], r["sample"]): r for r in read_objects(gen_path)}
    for unit in units:  # a unit only partly on disk (a torn write) is generated again, whole
        keys = [(p.task_id, j) for p in unit for j in range(params.n)]
        if not all(k in done for k in keys):
            for k in keys:
                done.pop(k, None)
    judged = {(r["task_id"], r["sample"]) for r in read_objects(verdict_path)}
    executor = Executor(verdict_path, by_id, params)
    executor.start()
    unjudged = [r for k, r in done.items() if k not in judged]
    if unjudged:
        executor.inbox.put(unjudged)

    finished_prompts = sum(all((p.task_id, j) in done for j in range(params.n)) for p in problems)
    ctx.progress(finished_prompts, len(problems), "prompts")
    try:
        generate(ctx, params, backend, units, built, split_of, done, executor, finished_prompts, len(problems),
                 gen_path)
    except BaseException:
        executor.abort.set()  # cancelled or crashed: stop the sandbox, keep what is on disk for resume
        raise
    finally:
        executor.inbox.put(None)
        executor.join()
    if executor.error is not None:
        raise StageFailed(f"sample: sandbox execution failed: {type(executor.error).__name__}: {executor.error}")
    publish(ctx, params, problems, split_of, done, read_objects(verdict_path), data_hash, backend, overridden)


def generate(ctx: StageContext, params: Params, backend: Any, units: list[list[Problem]], built: dict,
             split_of: dict[str, str], done: dict, executor: Executor, finished_prompts: int, total: int,
             gen_path: Path) -> None:
    """Generate every unfinished unit; append each whole unit (fsync) and queue it for the sandbox."""
    t0 = time.monotonic()
    todo_units = [u for u in units if not all((p.task_id, j) in done for p in u for j in range(params.n))]
    sampling = {k: getattr(params, k) for k in SAMPLING_KEYS}

    def request(p: Problem) -> GenRequest:
        return seeded_request(p.task_id, built[p.task_id].text, **sampling)

    for todo, _reqs, outs in generate_units(backend, todo_units, request, ctx.check_cancelled):
        records = []
        for p, out in zip(todo, outs, strict=True):
            for j in range(params.n):
                pr = built[p.task_id]
                rec = {"task_id": p.task_id, "split": split_of[p.task_id], "sample": j, "prompt": pr.text,
                       "completion": out.texts[j], "code": postprocess.clean(out.texts[j], chat=pr.chat, body=pr.body),
                       "tokens": out.token_counts[j], "finish": out.finish_reasons[j]}
                records.append(rec)
                done[(p.task_id, j)] = rec
        append_jsonl(gen_path, records, sort_keys=True)
        executor.inbox.put(records)
        finished_prompts += len(todo)
        ctx.progress(finished_prompts, total, "prompts")
        ctx.metric("tokens_per_s", sum(r["tokens"] for r in records) / max(time.monotonic() - t0, 1e-9))
        t0 = time.monotonic()
        if executor.error is not None:
            return


def publish(ctx: StageContext, params: Params, problems: list[Problem], split_of: dict[str, str], done: dict,
            verdicts: list[dict], data_hash: str, backend: Any, overridden: list[str]) -> None:
    """Join samples with verdicts, write the artifact directory, publish, report pass rates."""
    verdict = {(v["task_id"], v["sample"]): v for v in verdicts}
    out = ensure_dir(ctx.work_dir / "out")
    rows, passing = [], {}
    for p in problems:
        for j in range(params.n):
            rec = dict(done[(p.task_id, j)])
            v = verdict.get((p.task_id, j))
            if v is None:
                raise StageFailed(f"sample: no verdict for {p.task_id} sample {j}")
            rec["verdict"] = {k: v[k] for k in ("status", "error_type", "blocked_op")}
            rows.append(rec)
            passing[p.task_id] = passing.get(p.task_id, 0) + (v["status"] == "passed")
    (out / "samples.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    (out / "problems.jsonl").write_text("".join(json.dumps(
        {"task_id": p.task_id, "split": split_of[p.task_id], "text": p.text, "entry_point": p.entry_point,
         "test": p.test, "canonical_solution": p.canonical_solution}, sort_keys=True) + "\n" for p in problems))
    model_hash = content_hash(ctx.inputs["model"])
    meta = {"params": params.model_dump(mode="json"), "model_hash": model_hash, "dataset_hash": data_hash,
            "backend": backend.name, "device": backend.device, "eval_split_override": overridden}
    atomic_write_json(out / "meta.json", meta)
    ctx.publish("samples", out, eval_split_override=overridden)
    rate = sum(passing.values()) / max(len(rows), 1)
    solved = sum(c > 0 for c in passing.values())
    ctx.metric("sample_pass_rate", rate)
    ctx.metric("prompts_with_a_pass", solved)
    ctx.record_result({"benchmark": "mbpp_sampling", "model_hash": model_hash, "model_path": str(ctx.inputs["model"]),
                       "dataset_hash": data_hash,
                       "protocol": {k: meta["params"][k] for k in ("n", "temperature", "top_p", "top_k", "strategy",
                                                                   "max_new_tokens", "seed", "splits", "limit")},
                       "metrics": {"sample_pass_rate": rate, "prompts_with_a_pass": float(solved),
                                   "prompts": float(len(problems))},
                       "backend": backend.name, "device": backend.device, "eval_split_override": overridden})
