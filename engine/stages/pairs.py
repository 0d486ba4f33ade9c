"""Stage `pairs`: DPO preference pairs from executed samples (chosen passes, rejected fails).

For each prompt with 0 < passing < N: chosen x rejected over passing x failing samples,
duplicates removed after normalising the code, capped per prompt, every chosen program
re-run in the sandbox (a recorded verdict is not trusted twice). When no sample of a
train-split problem passes, its reference solution may serve as chosen, flagged. Each
record carries the prompt exactly as it was sent (chat template applied). Prompts that
overlap an evaluation set (engine/data/decontam.py) are dropped or kept, as the spec says,
and listed in summary.json either way.
"""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import product
from pathlib import Path
from typing import Any

from pydantic import Field

from engine.data import mbpp
from engine.data.decontam import DecontamIndex
from engine.data.humaneval import Problem
from engine.data.postprocess import normalize_code
from engine.sdk.base import StageContext, StageFailed, StageParams
from engine.workspace import atomic_write_json, ensure_dir


class Params(StageParams):
    max_pairs_per_prompt: int = Field(ge=1)
    reference_when_none_pass: bool
    drop_contaminated: bool                 # drop prompts overlapping evaluation sets (recorded) or keep them
    humaneval_plus: str | None = None       # evalplus files, checked when configured
    mbpp_plus: str | None = None
    exec_timeout_s: float = 10.0
    exec_workers: int | None = None


INPUTS = {"samples": "the sample stage's samples dir (samples.jsonl, problems.jsonl)"}
OUTPUTS = {"pairs": "dir: pairs.jsonl (prompt as sent, chosen, rejected, ids, failure category), summary.json"}


def memory_estimate(params: Params, inputs: dict[str, Path]) -> int:
    return 1 << 30  # JSON records and a sandbox pool





def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except (OSError, ValueError) as exc:
        raise StageFailed(f"pairs: cannot read {path}: {exc}") from None


def interleave(chosen: list[dict], rejected: list[dict]) -> list[tuple[dict, dict]]:
    """All chosen x rejected, ordered so that a cap spreads over different samples on both sides."""
    pairs = list(product(range(len(chosen)), range(len(rejected))))
    pairs.sort(key=lambda ij: (max(ij[0], ij[1]), ij[1], ij[0]))
    return [(chosen[i], rejected[j]) for i, j in pairs]


def reference_text(code: str) -> str:
    return "```python\n" + code.strip("\n") + "\n```"


def decontam_index(src: Path, params: Params) -> DecontamIndex:
    """HumanEval + the MBPP test split the samples' data_path holds (+ evalplus files when configured)."""
    from engine.data.decontam import eval_index

    try:
        meta = json.loads((src / "meta.json").read_text())
        mbpp_dir = Path(meta["params"]["data_path"])
    except (OSError, ValueError, KeyError) as exc:
        raise StageFailed(f"pairs: {src}/meta.json does not name the MBPP data_path ({exc})") from None
    return eval_index(mbpp_dir, humaneval_plus=Path(params.humaneval_plus) if params.humaneval_plus else None,
                      mbpp_plus=Path(params.mbpp_plus) if params.mbpp_plus else None)


def overlaps(index: DecontamIndex, keys: list[str], rows: list[Any]) -> dict[str, list[str]]:
    """key -> 'source:task_id:reason' of every evaluation problem its row overlaps."""
    found = index.scan(rows)
    out: dict[str, set[str]] = defaultdict(set)
    for r, hits in found.rows.items():
        out[keys[r]] |= {f"{h.source}:{h.task_id}:{h.reason}" for h in hits}
    return {k: sorted(v) for k, v in out.items()}


def run(ctx: StageContext, params: Params) -> None:
    src = ctx.inputs["samples"]
    rows = read_jsonl(src / "samples.jsonl")
    problems = {p["task_id"]: p for p in read_jsonl(src / "problems.jsonl")}
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["task_id"] not in problems:
            raise StageFailed(f"pairs: {src}/samples.jsonl names task {r['task_id']} missing from problems.jsonl")
        by_task[r["task_id"]].append(r)
    n = max((len(v) for v in by_task.values()), default=0)
    index = decontam_index(src, params)
    tasks = sorted(by_task)
    contaminated = overlaps(index, tasks, [by_task[t][0]["prompt"] for t in tasks])  # the prompts as sent
    if params.drop_contaminated:
        for task in contaminated:
            by_task.pop(task, None)
    elif contaminated:
        ctx.warning(f"pairs: {len(contaminated)} prompts overlap evaluation problems and are kept "
                    "(drop_contaminated: false); training stages will refuse them unless allowed")

    # Candidates per task, deduplicated by normalised code (first sample id wins).
    plans: dict[str, tuple[list[dict], list[dict]]] = {}
    histogram = [0] * (n + 1)
    for task, samples in sorted(by_task.items()):
        samples.sort(key=lambda r: r["sample"])
        passing = sum(r["verdict"]["status"] == "passed" for r in samples)
        histogram[passing] += 1
        chosen, rejected, seen = [], [], set()
        for r in samples:
            key = normalize_code(r["code"])
            if key in seen or not r["completion"].strip():  # an empty completion is no text to prefer against
                continue
            seen.add(key)
            (chosen if r["verdict"]["status"] == "passed" else rejected).append(dict(r, norm=key))
        if 0 < passing < len(samples):
            plans[task] = (chosen, rejected)
        elif passing == 0 and params.reference_when_none_pass and problems[task]["split"] == "train" and rejected:
            ref = problems[task]["canonical_solution"]
            plans[task] = ([{"sample": None, "completion": reference_text(ref), "code": ref,
                             "norm": normalize_code(ref), "reference": True}], rejected)

    # Re-verify every chosen program in the sandbox.
    from engine.sandbox.pool import SandboxPool

    checks = [(task, c) for task, (chosen, _) in plans.items() for c in chosen]
    with SandboxPool(workers=params.exec_workers) as pool:
        verdicts = pool.run_many([mbpp.make_job(Problem(**{k: problems[t][k] for k in (
            "task_id", "entry_point", "test", "canonical_solution", "text")}, prompt=problems[t]["text"]),
            c["code"], params.exec_timeout_s) for t, c in checks])
    failed_reverify = 0
    for (task, c), v in zip(checks, verdicts, strict=True):
        c["reverified"] = v.passed
        if not v.passed:
            failed_reverify += 1
            ctx.warning(f"pairs: {task} sample {c['sample']} was recorded passing but fails on re-run ({v.status})")

    out_rows: list[dict[str, Any]] = []
    for task, (chosen, rejected) in plans.items():
        chosen = [c for c in chosen if c["reverified"]]
        made = 0
        for c, r in interleave(chosen, rejected):
            if made == params.max_pairs_per_prompt:
                break
            if c["norm"] == r["norm"]:
                continue
            out_rows.append({
                "task_id": task, "split": problems[task]["split"], "prompt": r["prompt"],
                "chosen": c["completion"], "rejected": r["completion"],
                "chosen_code": c["code"], "rejected_code": r["code"],
                "chosen_sample": c["sample"], "rejected_sample": r["sample"],
                "chosen_is_reference": bool(c.get("reference")),
                "rejected_category": r["verdict"]["status"], "rejected_error_type": r["verdict"].get("error_type"),
            })
            made += 1

    # Whole records too (completions can carry an evaluation solution): the check training stages run.
    leaked = overlaps(index, [str(i) for i in range(len(out_rows))], out_rows)
    if params.drop_contaminated:
        out_rows = [r for i, r in enumerate(out_rows) if str(i) not in leaked]
    elif leaked:
        ctx.warning(f"pairs: {len(leaked)} pair records overlap evaluation problems and are kept")
    prompts_with_pairs = len({r["task_id"] for r in out_rows})
    reference_pairs = sum(r["chosen_is_reference"] for r in out_rows)
    out = ensure_dir(ctx.work_dir / "out")
    (out / "pairs.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in out_rows))
    summary = {"pairs": len(out_rows), "prompts": len(by_task), "prompts_with_pairs": prompts_with_pairs,
               "contaminated_prompts": len(contaminated), "dropped_contaminated": params.drop_contaminated,
               "contaminated": contaminated, "contaminated_records": len(leaked),
               "reference_pairs": reference_pairs, "chosen_failed_reverify": failed_reverify,
               "pass_count_histogram": {str(k): v for k, v in enumerate(histogram)}, "samples_per_prompt": n}
    atomic_write_json(out / "summary.json", summary)
    for name in ("pairs", "prompts_with_pairs", "reference_pairs", "chosen_failed_reverify", "contaminated_prompts"):
        ctx.metric(name, float(summary[name]))
    for k, v in enumerate(histogram):
        ctx.metric("prompts_with_passing", float(v), step=k)
    ctx.publish("pairs", out, **{k: v for k, v in summary.items() if k != "contaminated"})
