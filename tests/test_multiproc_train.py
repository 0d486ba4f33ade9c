"""`sft` as two DDP ranks (torchrun, gloo, CPU) on the tiny model: the same losses as one process
with the same global batch and data order; a lost rank fails the job cleanly and the next
attempt resumes from the last checkpoint to the same losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine.data import mbpp
from engine.events import read_events
from engine.sdk.base import JobSpec
from engine.sdk.launch import job_argv, rank_accum, rank_log
from engine.sdk.run import params_hash
from engine.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
STEPS = 8
TOL = 1e-4  # the same micro-batches, summed in another order (allreduce vs accumulation): float32 rounding


def sft_params() -> dict:
    return dict(learning_rate=1e-2, epochs=None, max_steps=STEPS, lora_rank=8, lora_alpha=16, lora_dropout=0.0,
                target_modules=["q_proj", "v_proj"], batch_size=2, grad_accum=2, max_length=96, save_steps=2,
                lr_scheduler="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, quantization="none",
                eval_data_dir=str(mbpp.SHIPPED_DIR))


@pytest.fixture(scope="module")
def sft_data(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    path = tmp_path_factory.mktemp("ddp") / "sft.jsonl"
    rows = []
    for i in range(12):
        prompt = tok.apply_chat_template([{"role": "user", "content": f"Write a function f{i}(x)."}],
                                         tokenize=False, add_generation_prompt=True)
        rows.append({"prompt": prompt, "completion": f"def f{i}(x):\n    return x * {i} + {i % 3}\n"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def start(ws: Workspace, model: Path, data: Path, gpus: int, attempt: int = 1) -> subprocess.Popen:
    """The job as the supervisor starts it: the job file, then ``job_argv`` as its own process group."""
    job = JobSpec(job_id=f"sft.{attempt}", stage="sft", kind="sft", attempt=attempt, workspace=str(ws.root),
                  params=sft_params(), inputs={"model": str(model), "data": str(data)},
                  params_hash=params_hash(sft_params()), outputs=["adapter"], device="cpu")
    job.save(ws.job_file(job.job_id))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(job_argv(ws.job_file(job.job_id), "sft", gpus), cwd=ws.root, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def losses(ws: Workspace, job_id: str) -> dict[int, float]:
    return {e["step"]: e["value"] for e in read_events(ws.job_log(job_id)) if e["kind"] == "metric" and e["name"] == "loss"}


@pytest.fixture(scope="module")
def one_process(tiny_model_dir: Path, sft_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    ws = Workspace(tmp_path_factory.mktemp("one") / "ws").init()
    proc = start(ws, tiny_model_dir, sft_data, gpus=1)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    got = losses(ws, "sft.1")
    assert sorted(got) == list(range(1, STEPS + 1))
    return got


def test_only_trainers_with_several_gpus_go_through_torchrun(tmp_path: Path) -> None:
    f = tmp_path / "job.json"
    assert job_argv(f, "sft", 1)[1:] == ["-m", "engine.sdk.run", str(f)]  # gpus: 1 is today's path
    assert job_argv(f, "eval", 4)[1:] == ["-m", "engine.sdk.run", str(f)]  # engines, not ranks
    assert job_argv(f, "dpo", 2)[1:] == ["-m", "engine.sdk.launch", "--ranks", "2", str(f)]


def test_the_spec_refuses_a_grad_accum_the_ranks_cannot_split() -> None:
    from engine.spec import SpecError, parse_spec

    stage = {"kind": "sft", "gpus": 2, "memory_gb": 1, "duration_h": 1, "params": {**sft_params(), "grad_accum": 3},
             "inputs": {"model": "model:base", "data": "dataset:d"}}
    data = {"name": "t", "models": {"base": {"path": "/m"}}, "datasets": {"d": {"path": "/d.jsonl"}},
            "stages": {"sft": stage}}
    with pytest.raises(SpecError, match=r"stages\.sft\.gpus: params\.grad_accum 3 is not divisible by gpus 2"):
        parse_spec(data, "p.yaml")
    parse_spec({**data, "stages": {"sft": {**stage, "params": sft_params()}}}, "p.yaml")


def test_rank_accum_splits_the_global_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rank_accum(4) == 2
    with pytest.raises(ValueError, match="grad_accum 3 is not divisible by the 2 ranks"):
        rank_accum(3)


def test_two_gloo_ranks_match_one_process(tiny_model_dir: Path, sft_data: Path, one_process: dict[int, float],
                                          tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws").init()
    proc = start(ws, tiny_model_dir, sft_data, gpus=2)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    got = losses(ws, "sft.1")
    assert sorted(got) == sorted(one_process)
    assert max(abs(got[s] - one_process[s]) for s in got) < TOL, (got, one_process)
    ev = read_events(ws.job_log("sft.1"))
    assert ev[-1]["kind"] == "job_finished" and ev[-1]["outcome"] == "ok"
    assert [e["done"] for e in ev if e["kind"] == "progress"][-1] == STEPS  # progress comes from rank 0 only
    assert sum(e["kind"] == "artifact" for e in ev) == 1
    assert (ws.root / "results" / "ledger.jsonl").read_text().count("\n") == 1
    rank1 = read_events(rank_log(ws, "sft.1", 1))
    assert rank1[0]["kind"] == "rank_started" and rank1[-1] == {**rank1[-1], "kind": "rank_finished", "outcome": "ok"}


def test_lost_rank_fails_the_job_and_the_next_attempt_resumes(tiny_model_dir: Path, sft_data: Path,
                                                              one_process: dict[int, float], tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws").init()
    proc = start(ws, tiny_model_dir, sft_data, gpus=2)
    deadline = time.monotonic() + 120
    while not any(e["kind"] == "checkpoint" for e in read_events(ws.job_log("sft.1"))):
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint before the run ended"
        time.sleep(0.01)
    rank0 = next(e["pid"] for e in read_events(ws.job_log("sft.1")) if e["kind"] == "job_started")
    rank1 = read_events(rank_log(ws, "sft.1", 1))[0]["pid"]
    os.kill(rank0, signal.SIGSTOP)  # hold rank 0 while rank 1 dies, so a fast machine cannot finish first
    os.kill(rank1, signal.SIGKILL)
    time.sleep(0.5)
    os.kill(rank0, signal.SIGCONT)
    assert proc.wait(timeout=120) == 1
    end = read_events(ws.job_log("sft.1"))[-1]
    assert end["kind"] == "job_finished" and end["outcome"] == "failed"
    # whoever notices first says why: the leader (rank 1 gone) or rank 0's collective (gloo: peer reset)
    assert end["error"].startswith("rank 1 of 2 lost") or "Connection" in end["error"], end["error"]
    saved = max(e["step"] for e in read_events(ws.job_log("sft.1")) if e["kind"] == "checkpoint")
    assert saved < STEPS

    proc = start(ws, tiny_model_dir, sft_data, gpus=2, attempt=2)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    resumed = losses(ws, "sft.2")
    assert min(resumed) == saved + 1 and max(resumed) == STEPS
    assert max(abs(resumed[s] - one_process[s]) for s in resumed) < TOL, (resumed, one_process)
