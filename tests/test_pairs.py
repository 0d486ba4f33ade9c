"""Stage `pairs`: chosen passes (re-verified), rejected fails, chosen != rejected, no duplicates, caps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.data import humaneval, mbpp
from engine.data.postprocess import normalize_code
from engine.events import read_events
from engine.sandbox.pool import SandboxPool
from engine.sdk.run import run_inline
from engine.workspace import Workspace

MBPP = mbpp.SHIPPED_DIR
N, CAP = 7, 4
_HE1 = {p.task_id: p for p in humaneval.load()[0]}["HumanEval/1"]
SMUGGLED = _HE1.prompt + _HE1.canonical_solution
# A prompt that carries HumanEval/0's statement verbatim: must not become training data.
LEAK = ("<|im_start|>user\nCheck if in given list of numbers, are any two numbers closer to each other than "
        "given threshold.<|im_end|>\n")


def variants(p) -> dict[str, tuple[str, str]]:
    """name -> (code, recorded status)."""
    ref, fn = p.canonical_solution, p.entry_point
    return {
        "correct": (ref, "passed"),
        "correct_dup": ("# same program, other spelling\n" + ref + "\n\n\n", "passed"),
        "correct_other": (ref + "\n\ndef _helper():\n    return 0\n", "passed"),
        "wrong": (f"def {fn}(*args):\n    return None\n", "failed"),
        "raises": (f"def {fn}(*args):\n    raise ValueError('no')\n", "error"),
        "syntax": (f"def {fn}(:\n", "syntax_error"),
        "forged": (f"def {fn}(*args):\n    return 'forged'\n", "passed"),  # a verdict that lies
        "wrong_dup": (f"def {fn}(*args):\n    return None  # again\n", "failed"),
        "smuggled": (SMUGGLED, "failed"),  # an evaluation solution inside a completion
    }


def write_samples(root: Path) -> dict[str, str]:
    train, _ = mbpp.load(MBPP, "train")
    val, _ = mbpp.load(MBPP, "validation")
    mixed, none_train, none_val, all_pass, leaked, smuggle = train[1], train[3], val[0], train[5], train[7], train[9]
    plan = {
        smuggle.task_id: ["correct", "smuggled", "wrong", "correct", "correct", "correct", "correct"],
        leaked.task_id: ["correct", "wrong", "raises", "syntax", "wrong", "wrong", "raises"],
        mixed.task_id: ["correct", "correct_dup", "correct_other", "wrong", "raises", "syntax", "forged"],
        none_train.task_id: ["wrong", "raises", "syntax", "wrong_dup", "wrong", "wrong", "raises"],
        none_val.task_id: ["wrong", "raises", "syntax", "wrong_dup", "wrong", "wrong", "raises"],
        all_pass.task_id: ["correct", "correct_dup", "correct_other", "correct", "correct", "correct", "correct"],
    }
    probs = {p.task_id: (p, "train") for p in train} | {p.task_id: (p, "validation") for p in val}
    root.mkdir(parents=True)
    rows, problems = [], []
    for task, names in plan.items():
        p, split = probs[task]
        problems.append({"task_id": task, "split": split, "text": p.text, "entry_point": p.entry_point,
                         "test": p.test, "canonical_solution": p.canonical_solution})
        prompt = f"<|im_start|>user\n{task}<|im_end|>\n" if task != leaked.task_id else LEAK
        for j, name in enumerate(names):
            code, status = variants(p)[name]
            rows.append({"task_id": task, "split": split, "sample": j, "prompt": prompt,
                         "completion": f"```python\n{code}\n```", "code": code, "tokens": 10, "finish": "stop",
                         "verdict": {"status": status, "error_type": None, "blocked_op": None}})
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in problems))
    (root / "meta.json").write_text(json.dumps({"params": {"data_path": str(MBPP)}}))
    return {"mixed": mixed.task_id, "none_train": none_train.task_id, "none_val": none_val.task_id,
            "all_pass": all_pass.task_id, "leaked": leaked.task_id, "smuggle": smuggle.task_id}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict[str, str], list[dict], dict]:
    tmp = tmp_path_factory.mktemp("pairs")
    tasks = write_samples(tmp / "samples")
    ws = Workspace(tmp / "ws")
    params = {"max_pairs_per_prompt": CAP, "reference_when_none_pass": True, "drop_contaminated": True,
              "exec_workers": 2}
    assert run_inline(ws, "pairs", "pairs", params, {"samples": tmp / "samples"}, outputs=["pairs"]) == "ok"
    out = ws.artifact_path("pairs", "pairs")
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    return ws, tasks, pairs, json.loads((out / "summary.json").read_text())


def test_pairs_are_sound(made) -> None:
    ws, tasks, pairs, summary = made
    problems = {p.task_id: p for p in mbpp.load(MBPP, "train")[0]}
    with SandboxPool(workers=2) as pool:
        chosen = pool.run_many([mbpp.make_job(problems[r["task_id"]], r["chosen_code"]) for r in pairs])
        rejected = pool.run_many([mbpp.make_job(problems[r["task_id"]], r["rejected_code"]) for r in pairs])
    assert all(v.passed for v in chosen)
    assert not any(v.passed for v in rejected)
    keys = [(r["task_id"], normalize_code(r["chosen_code"]), normalize_code(r["rejected_code"])) for r in pairs]
    assert len(set(keys)) == len(keys) and all(c != r for _, c, r in keys)
    for r in pairs:
        assert r["prompt"] == f"<|im_start|>user\n{r['task_id']}<|im_end|>\n"  # the prompt as sent
        assert r["rejected_category"] in ("failed", "error", "syntax_error")


def test_caps_reference_and_summary(made) -> None:
    ws, tasks, pairs, summary = made
    by = {t: [r for r in pairs if r["task_id"] == t] for t in tasks.values()}
    mixed = by[tasks["mixed"]]
    assert len(mixed) == CAP  # 2 distinct re-verified chosen x 3 distinct rejected = 6, capped
    assert {r["chosen_sample"] for r in mixed} == {0, 2}  # the duplicate (1) and the forged pass (6) are out
    assert not any(r["chosen_is_reference"] for r in mixed)
    ref = by[tasks["none_train"]]
    assert len(ref) == 3 and all(r["chosen_is_reference"] and r["chosen_sample"] is None for r in ref)
    assert by[tasks["none_val"]] == [] and by[tasks["all_pass"]] == [] and by[tasks["leaked"]] == []
    assert summary["contaminated"] == {tasks["leaked"]: ["humaneval:HumanEval/0:concepts", "humaneval:HumanEval/0:statement",
                                                         "humaneval:HumanEval/0:wording"]}
    assert summary["contaminated_prompts"] == 1 and summary["prompts"] == 5
    smuggled = by[tasks["smuggle"]]  # the pair whose rejected side carries HumanEval/1 is dropped
    assert len(smuggled) == 1 and "separate_paren_groups" not in smuggled[0]["rejected"]
    assert summary["contaminated_records"] == 1
    assert summary["pairs"] == len(pairs) == CAP + 3 + 1
    assert summary["prompts_with_pairs"] == 3 and summary["reference_pairs"] == 3
    assert summary["chosen_failed_reverify"] == 1
    assert summary["pass_count_histogram"] == {"0": 2, "1": 0, "2": 0, "3": 0, "4": 1, "5": 1, "6": 0, "7": 1}
    events = read_events(ws.job_log("pairs.1"))
    assert any(e["kind"] == "warning" and "fails on re-run" in e["message"] for e in events)


def test_normalize_code() -> None:
    a = 'def f(x):\n    """Doc."""\n    # c\n    return x+1\n'
    assert normalize_code(a) == normalize_code("def f(x):\n    return x + 1")
    assert normalize_code(a) != normalize_code("def f(x):\n    return x + 2")
    assert normalize_code("def f(:  # broken\n") == normalize_code("def f(:\n")
