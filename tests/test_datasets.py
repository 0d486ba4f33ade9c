"""Benchmarks through the sandbox (every reference passes, wrong ones fail right), loaders,
hash checks, splits, prompts and post-processing."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pytest

from engine.data import evalplus, humaneval, mbpp, postprocess, prompts, scoring
from engine.sandbox.pool import SandboxPool

MBPP_DIR = mbpp.SHIPPED_DIR


@pytest.fixture(scope="module")
def pool():
    with SandboxPool() as p:
        yield p


def test_every_reference_passes(pool: SandboxPool) -> None:
    he, _ = humaneval.load()
    mb, _ = mbpp.load(MBPP_DIR, "all")
    assert len(he) == 164 and len(mb) == 974
    jobs = [humaneval.make_job(p, p.canonical_solution, timeout=30) for p in he]
    jobs += [mbpp.make_job(p, p.canonical_solution, timeout=30) for p in mb]
    verdicts = pool.run_many(jobs)
    failing = {p.task_id: (v.status, v.detail[-200:]) for p, v in zip(he + mb, verdicts, strict=True) if not v.passed}
    assert failing == {}


def test_wrong_solutions_fail_with_their_category(pool: SandboxPool) -> None:
    he, _ = humaneval.load()
    mb, _ = mbpp.load(MBPP_DIR, "test")
    cases = [
        (humaneval.make_job(he[0], "    return not True\n"), "failed", "AssertionError"),
        (humaneval.make_job(he[1], "    raise ValueError('no')\n"), "error", "ValueError"),
        (humaneval.make_job(he[2], "    return (\n"), "syntax_error", "SyntaxError"),
        (humaneval.make_job(he[3], "    while True:\n        pass\n", timeout=1.0), "timeout", None),
        (humaneval.make_job(he[4], "    return 'x' * (1 << 40)\n"), "oom", "MemoryError"),
        (humaneval.make_job(he[5], "    import os\n    os.system('true')\n"), "blocked", None),
        (mbpp.make_job(mb[0], "def wrong():\n    return 1\n"), "error", "NameError"),
        (mbpp.make_job(mb[1], mb[2].canonical_solution.replace("\r\n", "\n")), "error", "NameError"),
    ]
    verdicts = pool.run_many([c[0] for c in cases])
    assert [(v.status, v.error_type) for v in verdicts] == [(s, e) for _, s, e in cases]


def test_mbpp_splits_and_entry_points() -> None:
    sizes = {s: len(mbpp.load(MBPP_DIR, s)[0]) for s in ("prompt", "test", "validation", "train")}
    assert sizes == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    san, digest = mbpp.load(MBPP_DIR, "test", "sanitized")
    assert len(san) == 257 and digest == mbpp.FILES["sanitized"][1]
    full, _ = mbpp.load(MBPP_DIR, "all")
    assert all(p.entry_point and p.entry_point in p.canonical_solution for p in full)
    assert {p.task_id for p in mbpp.load(MBPP_DIR, "test")[0]} == {f"Mbpp/{i}" for i in range(11, 511)}


def test_mbpp_missing_or_altered_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        mbpp.load(tmp_path)
    msg = str(missing.value)
    assert str(tmp_path / "mbpp.jsonl") in msg and mbpp.FILES["full"][1] in msg and "download" in msg
    shutil.copy(MBPP_DIR / "mbpp.jsonl", tmp_path / "mbpp.jsonl")
    with open(tmp_path / "mbpp.jsonl", "a") as fh:
        fh.write("\n")
    with pytest.raises(ValueError) as altered:
        mbpp.load(tmp_path)
    assert mbpp.FILES["full"][1] in str(altered.value) and "\n" not in str(altered.value)
    with pytest.raises(ValueError, match="split"):
        mbpp.load(MBPP_DIR, "dev")


def _plus_bench(tmp_path: Path, records: list[dict], monkeypatch: pytest.MonkeyPatch) -> scoring.Benchmark:
    monkeypatch.setenv("PMAT_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "HumanEvalPlus.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in records))
    return scoring.open_benchmark("humaneval_plus", path, unpinned=True)


def test_evalplus_format(pool: SandboxPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    he, _ = humaneval.load()
    rec = {"task_id": "HumanEval/0", "prompt": he[0].prompt, "entry_point": he[0].entry_point,
           "canonical_solution": he[0].canonical_solution, "base_input": [[[1.0, 2.0, 3.0], 0.5]],
           "plus_input": [[[1.0, 2.8, 3.0], 0.3], [[], 1.0]], "atol": 0}
    p32 = he[32]
    rec32 = {"task_id": p32.task_id, "prompt": p32.prompt, "entry_point": p32.entry_point,
             "canonical_solution": p32.canonical_solution, "base_input": [[[1, 2]]],
             "plus_input": [[[-6, 11, -6, 1]]], "atol": 1e-4}
    bench = _plus_bench(tmp_path, [rec, rec32], monkeypatch)
    assert [t.task_id for t in bench.tasks] == ["HumanEval/0", "HumanEval/32"] and bench.protocol.n_tasks == 2
    assert bench.protocol.data_pinned_by == "user" and bench.expected["HumanEval/0"]["plus"] == [True, False]
    cached = tmp_path / "cache" / "evalplus" / f"{bench.sha256}.pkl"
    stamp = cached.stat().st_mtime_ns
    assert scoring.open_benchmark("humaneval_plus", bench.path, unpinned=True).expected == bench.expected
    assert cached.stat().st_mtime_ns == stamp  # computed once per data file
    # find_zero: any root passes (x = 3 of (x-1)(x-2)(x-3), where bisection finds another), a non-root fails
    other_root = "    return -0.5 if len(xs) == 2 else 3.0\n"
    samples = [(p32.task_id, p32.prompt + c) for c in (p32.canonical_solution, other_root, "    return 0.0\n")]
    # right on the base input, wrong on a plus input: only the extra tests catch it
    almost = "    return numbers != [1.0, 2.0, 3.0]\n"
    samples += [("HumanEval/0", he[0].prompt + c) for c in (he[0].canonical_solution, almost)]
    got = [(v["base_status"], v["plus_status"]) for v in scoring.score(bench, samples, pool)]
    assert got == [("pass", "pass"), ("pass", "pass"), ("fail", "fail"), ("pass", "pass"), ("pass", "fail")]
    jobs = scoring.jobs_for(bench, bench.tasks[0], he[0].prompt + almost)
    assert [s for s, _ in jobs] == ["base", "plus"]
    assert all(he[0].canonical_solution.strip() not in j.program + j.runner_code for _, j in jobs)
    with pytest.raises(ValueError, match="272720b9"):
        scoring.open_benchmark("humaneval_plus", bench.path)
    with pytest.raises(ValueError, match="does not exist"):
        scoring.open_benchmark("humaneval_plus", tmp_path / "none.jsonl.gz")


def test_evalplus_time_limit_is_per_input(pool: SandboxPool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """max(1 s, 4 x the reference's time) for each input, not one clock for the program."""
    prompt = "def slow(x):\n"
    rec = {"task_id": "HumanEval/0", "prompt": prompt, "entry_point": "slow", "atol": 0,
           "canonical_solution": "    import time\n    time.sleep(0.3 if x else 0)\n    return x\n",
           "base_input": [[0], [0], [0], [1]], "plus_input": [[2]]}
    bench = _plus_bench(tmp_path, [rec], monkeypatch)
    assert evalplus.time_limits(bench.expected["HumanEval/0"]["base_time"], 1.0, 4.0)[:3] == [1.0] * 3
    body = "    import time\n    time.sleep({})\n    return x\n"
    samples = [("HumanEval/0", prompt + body.format(s)) for s in ("0.2", "0.6 if x else 0", "1.5 if x else 0",
                                                                  "1.5 if x == 0 else 0")]
    verdicts = scoring.score(bench, samples, pool)
    assert [v["base_status"] for v in verdicts] == ["pass", "pass", "fail", "fail"]
    assert verdicts[2]["base"]["pmat"] == "timeout" and verdicts[3]["plus_status"] == "pass"


def test_mbpp_plus_deserialisation_is_evalplus_own() -> None:
    from evalplus.data.mbpp import mbpp_deserialize_inputs as theirs

    samples = {2: [[[1, 2], [3]]], 63: [[[[1, 2], [3, 4]]]], 75: [[[[1, 2]], 3]], 106: [[[1], [2, 3]]],
               115: [[[[1], [], [2, 3]]]], 124: [["1.5", "1+2j"]], 250: [[[1, 2], 3]], 259: [[[[1, 2]], [[3, 4]]]],
               278: [[[1, [2, 3], 4]]], 307: [[[1, 2], 1, 5]], 722: [[{"a": [1, 2]}, 3, 4]], 252: [["1+2j"]],
               580: [[[1, [2, [3]]]]], 9: [[[1, 2]]]}
    for tid, inputs in samples.items():
        assert evalplus.mbpp_deserialize_inputs(f"Mbpp/{tid}", inputs) == theirs(f"Mbpp/{tid}", inputs), tid


def test_evalplus_file_errors_are_one_line(tmp_path: Path) -> None:
    rec = {"task_id": "Mbpp/63", "prompt": "", "entry_point": "f", "canonical_solution": "", "base_input": [[1]],
           "plus_input": []}
    path = tmp_path / "MbppPlus.jsonl"
    for text, needle in ((json.dumps(rec), ":1: inputs of Mbpp/63 are not MBPP+'s"), ("{}", ":1: record lacks"),
                         ("\n[1]", ":2: not a JSON object"), ("{", ":1: not JSON")):
        path.write_text(text + "\n")
        with pytest.raises(ValueError, match=re.escape(needle)):
            evalplus.load(path, mbpp=True)


def test_prompts_chat_and_completion(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    he, _ = humaneval.load()
    mb, _ = mbpp.load(MBPP_DIR, "test")
    shots = [p for p in mbpp.load(MBPP_DIR, "prompt")[0] if p.task_id in ("Mbpp/2", "Mbpp/3", "Mbpp/4")]
    chat = prompts.build("humaneval", he[0], "standard", tok)
    assert chat.chat and "<|im_start|>assistant" in chat.text and he[0].prompt in chat.text and not chat.body
    with_tests = prompts.build("mbpp", mb[0], "asserts", tok)
    assert mb[0].entry_point in with_tests.text and mbpp.tests_of(mb[0])["asserts"][0] in with_tests.text
    standard = prompts.build("mbpp", mb[0], "standard", tok).text
    assert mb[0].text in standard and "must be named" not in standard and "assert" not in standard
    few = prompts.build("mbpp", mb[0], "few-shot", tok, shots=shots)
    assert few.text.count("<|im_start|>user") == 4
    tok.chat_template = None
    plain = prompts.build("humaneval", he[0], "few-shot", tok)
    assert not plain.chat and plain.body and plain.text.endswith(he[0].prompt)
    assert plain.template_hash != chat.template_hash
    forced = prompts.build("humaneval", he[0], "standard", tok, mode="completion")
    assert not forced.chat and forced.text == he[0].prompt and forced.template_hash == plain.template_hash
    with pytest.raises(ValueError, match="MBPP"):
        prompts.build("humaneval", he[0], "asserts", tok)
    with pytest.raises(ValueError, match="no chat template"):
        prompts.build("humaneval", he[0], "standard", tok, mode="chat")


@pytest.mark.parametrize(("raw", "chat", "body", "expected"), [
    ("<think>plan</think>```python\ndef f():\n    return 1\n```\nThis works.", True, False,
     "def f():\n    return 1\n"),
    ("Here you go:\n```python\ndef f():\n    return 1\n```\nHuman: thanks", True, False, "def f():\n    return 1\n"),
    ("def f():\n    return 1\n```\nExplanation", True, False, "def f():\n    return 1\n"),
    ("    return 1\n\ndef unrelated():\n    pass\n", False, True, "    return 1\n"),
    ("    return 1\nUser: more?\n", False, True, "    return 1\n"),
    ("def f():\n    return 1\n[DONE]\nmore", False, False, "def f():\n    return 1\n"),
    ("```python\ndef f():\n    return 1", True, False, "def f():\n    return 1\n"),
])
def test_postprocess(raw: str, chat: bool, body: bool, expected: str) -> None:
    assert postprocess.clean(raw, chat=chat, body=body) == expected


def test_references_survive_the_model_output_path(pool: SandboxPool) -> None:
    """Each HumanEval reference as a chat reply (prose, fences, trailer) and as a raw completion
    that runs on past the body: post-processing plus program assembly keep every one passing."""
    he, _ = humaneval.load()
    jobs = []
    for p in he:
        chat = f"Here it is:\n```python\n{p.prompt}{p.canonical_solution}```\nIt works.\nHuman: thanks"
        jobs.append(humaneval.make_job(p, postprocess.clean(chat, chat=True, body=False)))
        raw = p.canonical_solution + "\n\ndef test():\n    assert False\n\ntest()\n"
        jobs.append(humaneval.make_job(p, postprocess.clean(raw, chat=False, body=True)))
    assert all(v.passed for v in pool.run_many(jobs))
