"""Stage `sft` on a tiny Qwen2: learning, telemetry, the loss sanity check, kill -9 and resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from engine.data import mbpp
from engine.events import read_events
from engine.sdk import train as _train
from engine.sdk.base import JobSpec
from engine.sdk.run import params_hash, run_inline
from engine.stages import sft
from engine.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
PROBLEMS = [
    ("Write a function add(a, b).", "def add(a, b):\n    return a + b\n"),
    ("Write a function is_even(n).", "def is_even(n):\n    return n % 2 == 0\n"),
    ("Write a function reverse(s).", "def reverse(s):\n    return s[::-1]\n"),
    ("Write a function square(x).", "def square(x):\n    return x * x\n"),
]
TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
MBPP_DIR = mbpp.SHIPPED_DIR

STAGE_DEVICE = os.environ.get("PMAT_TEST_DEVICE", "cpu")  # cuda on a GPU box: QLoRA when bitsandbytes is there


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny matmuls on a shared 2-core box: a second thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def expected_base_weights() -> str:
    """What the trained-on base computes with here: NF4 on CUDA with bitsandbytes (QLoRA)."""
    import importlib.util

    if not STAGE_DEVICE.startswith("cuda"):
        return "float32"
    return "nf4" if importlib.util.find_spec("bitsandbytes") else "bfloat16"


def sft_params(**over) -> dict:
    p = dict(learning_rate=1e-2, epochs=None, max_steps=12, lora_rank=8, lora_alpha=16, lora_dropout=0.0,
             target_modules=TARGETS, batch_size=2, grad_accum=1, max_length=96, save_steps=4,
             lr_scheduler="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, quantization="auto",
             eval_data_dir=str(MBPP_DIR))
    p.update(over)
    return p


def chat_prompt(model_dir: Path, text: str) -> str:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def sft_data(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sftdata") / "sft.jsonl"
    path.write_text("".join(json.dumps({"prompt": chat_prompt(tiny_model_dir, p), "completion": c}) + "\n"
                            for p, c in PROBLEMS))
    return path


def completion_loss(model, tok, rows: list[dict]) -> float:
    """Mean NLL of completion tokens (+ EOS) given the prompt, full logits."""
    total, count = 0.0, 0
    with torch.no_grad():
        for r in rows:
            p = tok(r["prompt"])["input_ids"]
            ids = tok(r["prompt"] + r["completion"] + tok.eos_token)["input_ids"]
            x = torch.tensor([ids])
            labels = x.clone()
            labels[0, : len(p)] = -100
            out = model(input_ids=x, labels=labels)
            n = int((labels[0, 1:] != -100).sum())
            total, count = total + out.loss.item() * n, count + n
    return total / count


def test_sft_lowers_the_loss_and_reports(tiny_model_dir: Path, sft_data: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ws = Workspace(tmp_path / "ws")
    out = run_inline(ws, "sft", "sft", params=sft_params(), inputs={"model": tiny_model_dir, "data": sft_data},
                     outputs=["adapter"], device=STAGE_DEVICE)
    events = read_events(ws.job_log("sft.1"))
    assert out == "ok", [e for e in events if e["kind"] in ("warning", "job_finished")]
    names = {e["name"] for e in events if e["kind"] == "metric"}
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_s"} <= names
    assert [e["step"] for e in events if e["kind"] == "checkpoint"] == [4, 8, 12]
    assert any(e["kind"] == "progress" and e["done"] == 12 and e["total"] == 12 for e in events)
    rec = [json.loads(x) for x in ws.ledger_path.read_text().splitlines()][-1]
    assert rec["benchmark"] == "sft" and rec["metrics"]["steps"] == 12
    assert rec["protocol"]["base_weights"] == expected_base_weights()
    assert [e["weights"] for e in events if e["kind"] == "base_weights"] == [expected_base_weights()]
    assert rec["metrics"]["first_loss"] < rec["metrics"]["ln_vocab"] + 1

    rows = [json.loads(x) for x in sft_data.read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = completion_loss(base, tok, rows)
    tuned = PeftModel.from_pretrained(base, ws.artifact_path("sft", "adapter"))
    after = completion_loss(tuned, tok, rows)
    assert after < before - 0.3, (before, after)


def test_broken_label_shift_trips_the_loss_check(
    tiny_model_dir: Path, sft_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model that knows the data (memorised, sharpened) scored against unshifted labels."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [json.loads(x) for x in sft_data.read_text().splitlines()]
    enc = tok([r["prompt"] + r["completion"] + tok.eos_token for r in rows], padding=True, return_tensors="pt")
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(30):
        model(**enc, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)  # confident, as a pretrained model is
        good = model(**enc, labels=labels).loss.item()
    limit = math.log(len(tok)) + 1
    assert good < limit  # correctly shifted labels pass the check
    confident = tmp_path / "confident"
    model.save_pretrained(confident)
    tok.save_pretrained(confident)

    monkeypatch.setattr(_train, "next_token_targets", lambda hidden, labels: (hidden, labels))  # the bug
    ws = Workspace(tmp_path / "ws")
    out = run_inline(ws, "sft", "sft", params=sft_params(max_steps=3, save_steps=10),
                     inputs={"model": confident, "data": sft_data}, outputs=["adapter"])
    fin = read_events(ws.job_log("sft.1"))[-1]
    assert out == "failed" and "StageFailed" in fin["error"] and "first logged loss" in fin["error"], fin
    assert not ws.ledger_path.exists()


def _adapter_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


def test_kill_9_then_resume_matches_an_uninterrupted_run(tiny_model_dir: Path, sft_data: Path, tmp_path: Path) -> None:
    params = sft_params(max_steps=10, save_steps=2)
    inputs = {"model": tiny_model_dir, "data": sft_data}
    ref_ws = Workspace(tmp_path / "ref")
    assert run_inline(ref_ws, "sft", "sft", params=params, inputs=inputs, outputs=["adapter"]) == "ok"

    ws = Workspace(tmp_path / "ws").init()
    job = JobSpec(job_id="sft.1", stage="sft", kind="sft", attempt=1, workspace=str(ws.root), params=params,
                  inputs={k: str(v) for k, v in inputs.items()}, params_hash=params_hash(params),
                  outputs=["adapter"], device="cpu", seed=0)
    job.save(ws.job_file(job.job_id))
    proc = subprocess.Popen([sys.executable, "-m", "engine.sdk.run", str(ws.job_file(job.job_id))], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},  # same numerics as the in-process run
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(e["kind"] == "checkpoint" for e in read_events(ws.job_log("sft.1"))):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    first = read_events(ws.job_log("sft.1"))
    assert proc.returncode == -signal.SIGKILL and not any(e["kind"] == "job_finished" for e in first)
    killed_at = max(e["step"] for e in first if e["kind"] == "checkpoint")
    assert killed_at < 10

    assert run_inline(ws, "sft", "sft", params=params, inputs=inputs, attempt=2, outputs=["adapter"]) == "ok"
    second = read_events(ws.job_log("sft.2"))
    assert any("resuming from" in e.get("message", "") for e in second if e["kind"] == "warning")
    steps = [e["step"] for e in second if e["kind"] == "metric" and e["name"] == "loss"]
    assert steps[0] == killed_at + 1 and steps[-1] == 10  # continued from the checkpoint, not restarted
    recs = [json.loads(x) for x in ws.ledger_path.read_text().splitlines()]
    ref = [json.loads(x) for x in ref_ws.ledger_path.read_text().splitlines()]
    assert recs[-1]["metrics"]["steps"] == ref[-1]["metrics"]["steps"] == 10
    assert recs[-1]["metrics"]["first_loss"] == pytest.approx(ref[-1]["metrics"]["first_loss"], abs=1e-5)
    a, b = _adapter_tensors(ws.artifact_path("sft", "adapter")), _adapter_tensors(ref_ws.artifact_path("sft", "adapter"))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_sigterm_saves_a_checkpoint_then_cancels(tiny_model_dir: Path, sft_data: Path, tmp_path: Path) -> None:
    params = sft_params(max_steps=40, save_steps=100)  # no scheduled save before the signal
    inputs = {"model": tiny_model_dir, "data": sft_data}
    ws = Workspace(tmp_path / "ws").init()
    job = JobSpec(job_id="sft.1", stage="sft", kind="sft", attempt=1, workspace=str(ws.root), params=params,
                  inputs={k: str(v) for k, v in inputs.items()}, params_hash=params_hash(params),
                  outputs=["adapter"], device="cpu", seed=0)
    job.save(ws.job_file(job.job_id))
    proc = subprocess.Popen([sys.executable, "-m", "engine.sdk.run", str(ws.job_file(job.job_id))], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(e["kind"] == "metric" and e["name"] == "loss" for e in read_events(ws.job_log("sft.1"))):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == 3  # engine.sdk.run: cancelled
    events = read_events(ws.job_log("sft.1"))
    saved = [e for e in events if e["kind"] == "checkpoint"]
    assert events[-1]["outcome"] == "cancelled" and len(saved) == 1 and 1 <= saved[0]["step"] < 40
    assert (Path(saved[0]["path"]) / "trainer_state.json").is_file()


def test_chunked_head_matches_full_logits_under_peft(tiny_model_dir: Path) -> None:
    """The path TRL's trainers call (``fused_lm_head=True``) now runs pmat_kernels.logprob on labelled tokens."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))  # as the trainers do
    peft_model = get_peft_model(model, _train.lora_config(4, 8, 0.0, ["q_proj", "v_proj"]))
    _train.install_chunked_head(peft_model.get_base_model(), chunk_size=3)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt
    out = peft_model(input_ids=ids, labels=labels, fused_lm_head=True)
    logits = peft_model(input_ids=ids).logits[:, :-1].float()  # the plain forward is untouched
    ref = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1) * (labels[:, 1:] != -100)
    torch.testing.assert_close(out.log_probs, ref, rtol=1e-5, atol=1e-5)
    p = logits.softmax(-1)
    ent = -(p * logits.log_softmax(-1)).sum(-1) * (labels[:, 1:] != -100)
    torch.testing.assert_close(out.entropy, ent, rtol=1e-4, atol=1e-4)
    grads = []
    for lp in (out.log_probs, ref):
        peft_model.zero_grad()
        lp.sum().backward(retain_graph=True)
        grads.append({n: q.grad.clone() for n, q in peft_model.named_parameters() if q.requires_grad})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6)


def test_params_have_no_hyperparameter_defaults(tiny_model_dir: Path) -> None:
    full = sft_params()
    for key in ("learning_rate", "lora_rank", "target_modules", "save_steps", "max_length", "quantization"):
        with pytest.raises(ValidationError, match=key):
            sft.Params(**{k: v for k, v in full.items() if k != key})
    with pytest.raises(ValidationError, match="exactly one of epochs and max_steps"):
        sft.Params(**{**full, "epochs": 1.0})
    p = sft.Params(**full)
    small = sft.memory_estimate(p, {"model": tiny_model_dir, "data": tiny_model_dir})
    big = sft.memory_estimate(sft.Params(**{**full, "batch_size": 64, "max_length": 2048}),
                              {"model": tiny_model_dir, "data": tiny_model_dir})
    assert (1 << 30) < small < big
