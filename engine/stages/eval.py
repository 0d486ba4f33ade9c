"""Stage `eval`: pass@k of a model on HumanEval, MBPP, HumanEval+ or MBPP+.

Problems go through in units: generate the unit's completions, clean them, run them in
the sandbox, then append one record per problem (exact prompt sent, raw and cleaned
completions, verdicts) to ``work/results.jsonl`` with an fsync. A resumed attempt skips
the problems found there; generation seeds depend only on (seed, task_id, sample), so a
killed-and-resumed run ends with the same record as an uninterrupted one. The work file
is tied to a fingerprint of model, data and protocol: a changed one starts afresh.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from engine.data import evalplus, humaneval, mbpp, postprocess, prompts
from engine.data.humaneval import Problem
from engine.gen.base import GenRequest, load_backend, load_tokenizer
from engine.gen.memory import sampling_bytes
from engine.gen.sampling import task_seed
from engine.results import make_record, pass_metrics
from engine.sandbox.pool import Job, Limits, SandboxPool
from engine.stages.base import StageContext, StageFailed, StageParams
from engine.workspace import append_jsonl, atomic_write_json, content_hash, ensure_dir

POSTPROCESS_VERSION = 1  # bump when engine/data/postprocess.py changes what it keeps


class Params(StageParams):
    benchmark: Literal["humaneval", "mbpp", "humaneval_plus", "mbpp_plus"]
    strategy: str                       # standard | few-shot | asserts (MBPP)
    prompt_mode: Literal["auto", "chat", "completion"]  # auto: chat when the tokenizer has a template
    max_new_tokens: int
    temperature: float
    n: int                              # samples per problem
    seed: int
    split: str = "test"                 # MBPP split by task_id; HumanEval(+) has only its test set
    variant: Literal["full", "sanitized"] = "full"  # MBPP file
    data_path: str | None = None        # MBPP directory or evalplus file; HumanEval: the package's file
    dataset_sha256: str | None = None   # expected hash of an evalplus file
    sanitize: bool = False              # also drop replies' demo code (prints, own asserts, __main__ blocks)
    top_p: float = 1.0
    top_k: int = 0
    ks: tuple[int, ...] = (1, 10, 100)  # pass@k reported for every k <= n
    limit: int | None = None            # first K problems (demo pipelines, tests)
    unit_problems: int = 16             # problems per generated, executed and appended unit
    backend: str = "transformers"
    dtype: str = "auto"
    timeout_s: float = 10.0             # wall clock per program (all its tests)
    memory_mb: int = 2048               # address space per program
    exec_workers: int | None = None


INPUTS = {"model": "HF checkpoint dir (tokenizer included), or a GGUF (file or dir): run on llama.cpp"}
OUTPUTS = {"results": "JSONL: one record per problem (prompt sent, raw and cleaned completions, verdicts)"}


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    rows = min(256, params.unit_problems * params.n)
    return sampling_bytes(Path(inputs["model"]), rows, 2048 + params.max_new_tokens, params.dtype)


def load_problems(params: Params) -> tuple[list[Problem], str, list[Problem]]:
    """(problems, dataset sha256, MBPP few-shot problems)."""
    b = params.benchmark
    if b == "humaneval":
        problems, digest = humaneval.load(Path(params.data_path) if params.data_path else None)
    elif b == "mbpp":
        if not params.data_path:
            raise StageFailed("eval mbpp: params.data_path must name the MBPP directory (mbpp.jsonl)")
        problems, digest = mbpp.load(Path(params.data_path), params.split, params.variant)
    else:
        if not params.data_path:
            raise StageFailed(f"eval {b}: params.data_path must name the evalplus file ({evalplus.OBTAIN[b]})")
        problems, digest = evalplus.load(Path(params.data_path), b, params.dataset_sha256)
    shots: list[Problem] = []
    if b == "mbpp" and params.strategy == "few-shot":
        shots = [p for p in mbpp.load(Path(params.data_path), "prompt")[0]
                 if p.task_id in ("Mbpp/2", "Mbpp/3", "Mbpp/4")]
    return (problems[: params.limit] if params.limit else problems), digest, shots


def make_job(benchmark: str, problem: Problem, code: str, timeout: float) -> Job:
    if benchmark == "humaneval":
        return humaneval.make_job(problem, code, timeout)
    if benchmark == "mbpp":
        return mbpp.make_job(problem, code, timeout)
    return evalplus.make_job(problem, code, timeout, body=benchmark == "humaneval_plus")


def read_done(path: Path) -> dict[str, dict[str, Any]]:
    """Per-problem records already appended (a partial last line is ignored)."""
    done: dict[str, dict[str, Any]] = {}
    if path.exists():
        for raw in path.read_bytes().split(b"\n")[:-1]:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            done[rec["task_id"]] = rec
    return done



def _protocol(params: Params, tpl_hash: str) -> dict[str, Any]:
    """Everything that changes the number (the ledger keys a result by it)."""
    return {"strategy": params.strategy, "prompt_mode": params.prompt_mode, "template_hash": tpl_hash,
            "max_new_tokens": params.max_new_tokens, "temperature": params.temperature, "top_p": params.top_p,
            "top_k": params.top_k, "n": params.n, "seed": params.seed, "split": params.split,
            "variant": params.variant, "limit": params.limit, "timeout_s": params.timeout_s,
            "memory_mb": params.memory_mb, "postprocess": POSTPROCESS_VERSION, "sanitize": params.sanitize,
            "dtype": params.dtype}


def run(ctx: StageContext, params: Params) -> None:
    t0 = time.monotonic()
    model_dir = ctx.inputs["model"]
    problems, dataset_hash, shots = load_problems(params)
    tokenizer = load_tokenizer(model_dir)  # a GGUF's own, embedded tokenizer and chat template
    try:
        built = {p.task_id: prompts.build(params.benchmark, p, params.strategy, tokenizer, shots, params.prompt_mode)
                 for p in problems}
    except ValueError as exc:
        raise StageFailed(f"eval: {exc}") from None
    tpl_hash = next(iter(built.values())).template_hash if built else prompts.template_hash(tokenizer)
    protocol = _protocol(params, tpl_hash)
    model_hash = content_hash(model_dir)
    fingerprint = {"model_hash": model_hash, "dataset_hash": dataset_hash, "benchmark": params.benchmark,
                   "protocol": protocol}
    work = ensure_dir(ctx.work_dir)
    results_path, fp_path = work / "results.jsonl", work / "fingerprint.json"
    if fp_path.exists() and json.loads(fp_path.read_text()) != fingerprint:
        ctx.warning("eval work dir belongs to another model, dataset or protocol; starting afresh")
        results_path.unlink(missing_ok=True)
    atomic_write_json(fp_path, fingerprint)
    done = read_done(results_path)
    todo = [p for p in problems if p.task_id not in done]
    ctx.progress(len(problems) - len(todo), len(problems), "problems")
    backend = load_backend(model_dir, params.backend, device=ctx.device, dtype=params.dtype)
    limits = Limits(memory_mb=params.memory_mb, cpu_s=int(params.timeout_s) + 2)
    with SandboxPool(workers=params.exec_workers, limits=limits) as pool:
        for start in range(0, len(todo), params.unit_problems):
            ctx.check_cancelled()
            unit = todo[start:start + params.unit_problems]
            reqs = [GenRequest(p.task_id, built[p.task_id].text, params.max_new_tokens, params.temperature,
                               params.top_p, params.top_k, task_seed(params.seed, p.task_id), params.n)
                    for p in unit]
            outs = backend.generate(reqs)
            ctx.check_cancelled()
            jobs, cleaned = [], []
            for p, out in zip(unit, outs, strict=True):
                pr = built[p.task_id]
                for raw in out.texts:
                    code = postprocess.clean(raw, chat=pr.chat, body=pr.body, sanitize=params.sanitize)
                    cleaned.append(code)
                    jobs.append(make_job(params.benchmark, p, code, params.timeout_s))
            verdicts = pool.run_many(jobs)
            for i, (p, out) in enumerate(zip(unit, outs, strict=True)):
                vs = verdicts[i * params.n:(i + 1) * params.n]
                rec = {"task_id": p.task_id, "prompt": built[p.task_id].text, "samples": [
                    {"raw": raw, "clean": cleaned[i * params.n + j], "tokens": out.token_counts[j],
                     "finish": out.finish_reasons[j], "status": v.status, "error_type": v.error_type,
                     "blocked_op": v.blocked_op, "detail": v.detail[-500:]}
                    for j, (raw, v) in enumerate(zip(out.texts, vs, strict=True))]}
                rec["correct"] = sum(s["status"] == "passed" for s in rec["samples"])
                append_jsonl(results_path, [rec])
                done[p.task_id] = rec
                ctx.progress(len(done), len(problems), "problems")
    finish(ctx, params, problems, done, fingerprint, backend, time.monotonic() - t0)


def finish(ctx: StageContext, params: Params, problems: list[Problem], done: dict[str, dict[str, Any]],
           fingerprint: dict[str, Any], backend: Any, wall_s: float) -> None:
    """Compute pass@k over the run's problems, record the result, publish the per-problem file."""
    counts = [(len(done[p.task_id]["samples"]), done[p.task_id]["correct"]) for p in problems]
    metrics = pass_metrics(counts, [k for k in params.ks if k <= params.n] or [1])
    categories: dict[str, int] = {}
    for p in problems:
        for s in done[p.task_id]["samples"]:
            categories[s["status"]] = categories.get(s["status"], 0) + 1
    for name, value in metrics.items():
        ctx.metric(name, value)
    ctx.record_result(make_record(
        benchmark=params.benchmark, model_hash=fingerprint["model_hash"], model_path=ctx.inputs["model"],
        dataset_hash=fingerprint["dataset_hash"], protocol=fingerprint["protocol"], metrics=metrics,
        backend=backend.name, device=backend.device, wall_s=round(wall_s, 3), n_problems=len(problems),
        categories=dict(sorted(categories.items())),
        per_problem={p.task_id: [s["status"] for s in done[p.task_id]["samples"]] for p in problems},
    ))
    out = ctx.work_dir / "results.publish.jsonl"
    with open(out, "w") as fh:
        for p in problems:
            fh.write(json.dumps(done[p.task_id]) + "\n")
    ctx.publish("results", out)
