"""Stage `eval` on a tiny model: end to end, and killed with SIGKILL then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.data import mbpp, protocols
from engine.events import read_events
from engine.results import read_ledger
from engine.sdk.base import JobSpec
from engine.sdk.run import params_hash, run_inline
from engine.workspace import Workspace, content_hash, sha256_file

MBPP_FILE = mbpp.SHIPPED_DIR / "mbpp.jsonl"
VOLATILE = ("job_id", "wall_s", "digest")  # digest: of the ledger line, which holds the job id


def _params(**kw) -> dict:
    base = {"protocol": "humaneval", "overrides": {"max_new_tokens": 24, "temperature": 0.8, "n": 2}, "seed": 7,
            "limit": 4, "unit_problems": 2, "exec_workers": 2}
    return {**base, **kw}


@pytest.fixture(scope="module")
def plus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HumanEval+-format file of four tasks, built here (not the pinned release)."""
    from engine.data import humaneval, plusgen

    rows = plusgen.humaneval_plus_records(humaneval.load()[0][:4], n_plus=3, extra=False)
    return plusgen.write_jsonl(tmp_path_factory.mktemp("plus") / "HumanEvalPlus-mini.jsonl", rows)


def _error(ws: Workspace, job_id: str) -> str:
    return str([e.get("error") or e.get("traceback") for e in read_events(ws.job_log(job_id))
                if e["kind"] in ("job_finished", "warning")])


def test_eval_end_to_end(tmp_path: Path, tiny_model_dir: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    outcome = run_inline(ws, "eval", "eval", _params(), {"model": tiny_model_dir}, outputs=["results"])
    assert outcome == "ok", _error(ws, "eval.1")
    (rec,) = read_ledger(ws)
    official = protocols.resolve("humaneval", overrides={"max_new_tokens": 24, "temperature": 0.8, "n": 2,
                                                         "n_tasks": 4})
    assert rec["benchmark"] == "humaneval" and rec["model_hash"] == content_hash(tiny_model_dir)
    assert rec["protocol_id"] == "humaneval" and rec["protocol"] == official.as_dict()
    assert rec["protocol_digest"] == official.digest() != protocols.get("humaneval").digest()
    assert rec["dataset_hash"] == protocols.get("humaneval").data_sha256 and rec["data_pinned_by"] == "project"
    assert rec["device"] == "cpu" and rec["backend"] == "transformers" and rec["n_problems"] == 4
    assert set(rec["metrics"]) == {"pass@1"} and 0.0 <= rec["metrics"]["pass@1"] <= 1.0
    assert list(rec["per_problem"]) == [f"HumanEval/{i}" for i in range(4)]
    assert sum(rec["categories"].values()) == 8 and rec["prompt_mode"] == "instruct"
    assert rec["sandbox"]["network"] and rec["sandbox"]["filesystem"]
    lines = [json.loads(x) for x in ws.artifact_path("eval", "results").read_text().splitlines()]
    assert len(lines) == 4 and lines[0]["prompt"].endswith("```python\n")  # evalplus's instruct prompt
    assert protocols.INSTRUCTION_PREFIX in lines[0]["prompt"]
    assert {"raw", "solution", "status", "base_status", "plus_status"} <= set(lines[0]["samples"][0])
    events = read_events(ws.job_log("eval.1"))
    progress = [e for e in events if e["kind"] == "progress"]
    assert progress[-1]["done"] == progress[-1]["total"] == 4

    mb = run_inline(ws, "eval_mbpp", "eval", _params(protocol="mbpp_leaderboard", overrides={"max_new_tokens": 16},
                                                        limit=2, data_path=str(MBPP_FILE)), {"model": tiny_model_dir})
    assert mb == "ok", _error(ws, "eval_mbpp.1")
    rec = read_ledger(ws)[-1]
    assert rec["benchmark"] == "mbpp" and list(rec["per_problem"]) == ["Mbpp/11", "Mbpp/12"]
    assert rec["protocol"]["task_ids"] == "11-510" and rec["protocol"]["n_tasks"] == 2
    wrong = tmp_path / "mbpp.jsonl"
    wrong.write_text(MBPP_FILE.read_text().replace("Write a", "Write  a", 1))
    bad = run_inline(ws, "eval_bad", "eval", _params(protocol="mbpp_leaderboard", data_path=str(wrong)),
                     {"model": tiny_model_dir})
    assert bad == "failed"
    finished = [e for e in read_events(ws.job_log("eval_bad.1")) if e["kind"] == "job_finished"][0]
    assert str(wrong) in finished["error"] and "ccf64cea" in finished["error"]


def test_eval_humaneval_plus_on_a_user_pinned_file(tmp_path: Path, tiny_model_dir: Path, plus_file: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    sha = sha256_file(plus_file)
    params = _params(protocol="humaneval_plus", overrides={"max_new_tokens": 16, "prompt_mode": "base"},
                     data_path=str(plus_file), dataset_sha256=sha, limit=None)
    assert run_inline(ws, "evp", "eval", params, {"model": tiny_model_dir}) == "ok", _error(ws, "evp.1")
    rec = read_ledger(ws)[-1]
    assert rec["benchmark"] == "humaneval_plus" and rec["data_pinned_by"] == "user" and rec["dataset_hash"] == sha
    assert rec["protocol"]["data_sha256"] == sha and rec["prompt_mode"] == "base"
    assert set(rec["metrics"]) == {"pass@1", "base_pass@1"} and len(rec["per_sample"]) == 4
    assert all(s["plus"] in ("pass", "fail") for v in rec["per_sample"].values() for s in v)
    unpinned = run_inline(ws, "evp_bad", "eval", {**params, "dataset_sha256": None}, {"model": tiny_model_dir})
    assert unpinned == "failed" and "272720b9" in _error(ws, "evp_bad.1")


def _job(ws: Workspace, attempt: int, params: dict, model: Path) -> Path:
    ws.init()
    job = JobSpec(job_id=f"eval.{attempt}", stage="eval", kind="eval", attempt=attempt, workspace=str(ws.root),
                  params=params, inputs={"model": str(model)}, params_hash=params_hash(params),
                  outputs=["results"], device="cpu", seed=0)
    path = ws.job_file(job.job_id)
    job.save(path)
    return path


def _run(jobfile: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine.sdk.run", str(jobfile)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_killed_and_resumed_gives_the_same_record(tmp_path: Path, tiny_model_dir: Path) -> None:
    params = _params(limit=8, unit_problems=2, overrides={"max_new_tokens": 16})
    whole, broken = Workspace(tmp_path / "whole"), Workspace(tmp_path / "broken")
    first = _run(_job(broken, 1, params, tiny_model_dir))
    results = broken.root / "work" / "eval" / "results.jsonl"
    kept: list[int] = []

    def kill_mid_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (results.exists() and results.read_bytes().count(b"\n") >= 2):
            time.sleep(0.01)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        kept.append(results.read_bytes().count(b"\n"))

    killer = threading.Thread(target=kill_mid_run)
    killer.start()  # the uninterrupted reference runs here meanwhile
    assert run_inline(whole, "eval", "eval", params, {"model": tiny_model_dir}, outputs=["results"]) == "ok"
    killer.join()
    assert 2 <= kept[0] < 8, "the kill must land mid-run"
    resumed = run_inline(broken, "eval", "eval", params, {"model": tiny_model_dir}, attempt=2, outputs=["results"])
    assert resumed == "ok", _error(broken, "eval.2")
    (a,), (b,) = read_ledger(whole), read_ledger(broken)
    assert {k: v for k, v in a.items() if k not in VOLATILE} == {k: v for k, v in b.items() if k not in VOLATILE}
    events = read_events(broken.job_log("eval.2"))
    assert [e for e in events if e["kind"] == "progress"][0]["done"] == kept[0]


def test_perplexity_matches_the_reference_method(tmp_path: Path, tiny_model_dir: Path) -> None:
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.stages.perplexity import windows

    assert windows(10, 4, 4) == [(0, 4, 3), (4, 8, 3), (8, 10, 1)]
    assert windows(10, 4, 2) == [(0, 4, 3), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
    text = tmp_path / "text.txt"
    text.write_text("def add(a, b):\n    return a + b\n\n" * 20)
    ws = Workspace(tmp_path / "ws")
    params = {"window": 32, "stride": 16, "dtype": "float32"}
    outcome = run_inline(ws, "ppl", "perplexity", params, {"model": tiny_model_dir, "text": text})
    assert outcome == "ok", _error(ws, "ppl.1")
    (rec,) = read_ledger(ws)
    assert rec["benchmark"] == "perplexity" and rec["device"] == "cpu" and rec["metrics"]["perplexity"] > 0
    # transformers' perplexity guide, token by token: labels masked outside each window's new tokens
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = tok(text.read_text(), add_special_tokens=False, return_tensors="pt")["input_ids"]
    nll, count = 0.0, 0
    with torch.inference_mode():
        for begin, end, scored in windows(ids.shape[1], 32, 16):
            labels = ids[:, begin:end].clone()
            labels[:, : end - begin - scored] = -100
            nll += float(model(ids[:, begin:end], labels=labels).loss) * scored
            count += scored
    assert rec["metrics"]["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    bad = run_inline(ws, "ppl_bad", "perplexity", {"window": 8, "stride": 16}, {"model": tiny_model_dir, "text": text})
    assert bad == "failed" and "stride" in _error(ws, "ppl_bad.1")


def test_parity_cpu_fp32_vs_bf16(tmp_path: Path, tiny_model_dir: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    loose = {"device_a": "cpu", "dtype_a": "float32", "device_b": "auto", "dtype_b": "bfloat16",
             "min_cosine": 0.99, "max_abs_diff": 1.0}
    assert run_inline(ws, "parity", "parity", loose, {"model": tiny_model_dir}) == "ok", _error(ws, "parity.1")
    rec = read_ledger(ws)[-1]
    assert rec["benchmark"] == "parity" and rec["metrics"]["passed"] == 1.0
    assert rec["devices"] == {"a": {"device": "cpu", "dtype": "float32"}, "b": {"device": "cpu", "dtype": "bfloat16"}}
    assert 0 < rec["metrics"]["max_abs_diff"] <= 1.0 and rec["metrics"]["cosine_min"] >= 0.99
    strict = {**loose, "max_abs_diff": 0.0}
    assert run_inline(ws, "parity_strict", "parity", strict, {"model": tiny_model_dir}) == "failed"
    assert read_ledger(ws)[-1]["metrics"]["passed"] == 0.0  # recorded, then failed
    if not __import__("torch").cuda.is_available():
        cuda = {**loose, "device_b": "cuda"}
        assert run_inline(ws, "parity_cuda", "parity", cuda, {"model": tiny_model_dir}) == "failed"
        assert "cuda" in _error(ws, "parity_cuda.1")
