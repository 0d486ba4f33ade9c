"""Wanda and magnitude pruning: masks pinned to references, the `prune` stage end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from engine.events import read_events
from engine.models.checkpoint import open_checkpoint
from engine.models.tiny import training_corpus
from engine.sdk.run import run_inline
from engine.stages.prune import Params, load_calibration
from engine.workspace import Workspace, sha256_file
from pmat_kernels.wanda import ActNorm, nm_mask, nm_mask_ref, row_mask, row_mask_ref, wanda_scores

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

STAGE_DEVICE = os.environ.get("PMAT_TEST_DEVICE", "cpu")  # cuda on a GPU box: the stages' CUDA paths


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.73])
def test_row_mask_fast_equals_reference(kernel_device: torch.device, sparsity: float) -> None:
    scores = torch.rand(33, 96).to(kernel_device)
    fast, ref = row_mask(scores, sparsity), row_mask_ref(scores, sparsity)
    assert torch.equal(fast, ref)
    assert (fast.sum(dim=1) == int(96 * sparsity)).all()
    # Pruned entries are the row's smallest.
    assert (scores.masked_fill(~fast, -1).amax(1) <= scores.masked_fill(fast, 2).amin(1)).all()


def test_two_four_mask(kernel_device: torch.device) -> None:
    scores = torch.rand(17, 64).to(kernel_device)
    fast = nm_mask(scores)
    assert torch.equal(fast, nm_mask_ref(scores))
    assert (fast.reshape(17, 16, 4).sum(-1) == 2).all()
    with pytest.raises(ValueError, match="divisible by 4"):
        nm_mask(torch.rand(3, 6))


def test_wanda_scores_use_input_norms() -> None:
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    acts = ActNorm(2)
    acts.add(torch.tensor([[3.0, 0.0], [4.0, 1.0]]))  # column norms 5 and 1
    assert torch.equal(wanda_scores(w, acts.norm()), torch.tensor([[5.0, 2.0], [15.0, 0.5]]))
    assert torch.equal(wanda_scores(w, None), w.abs())
    with pytest.raises(ValueError, match="does not fit"):
        wanda_scores(w, torch.ones(3))


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in training_corpus()[:60]))
    return path


def _prune(tmp: Path, model: Path, calib: Path, params: dict) -> tuple[str, Workspace, list[dict]]:
    ws = Workspace(tmp / "ws")
    outcome = run_inline(ws, "prune", "prune", params=params, inputs={"model": model, "calibration": calib},
                         outputs=["model"], seed=7, device=STAGE_DEVICE)
    return outcome, ws, read_events(ws.job_log("prune.1"))


def _reference_wanda(model_dir: Path, calib: Path, sparsity: float, nsamples: int, seqlen: int,
                     batch: int) -> dict[str, torch.Tensor]:
    """Independent sequential Wanda: full-model forwards, hooks on one layer at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = load_calibration(calib, AutoTokenizer.from_pretrained(model_dir), nsamples, seqlen, 7)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = {}
    with torch.no_grad():
        for li, layer in enumerate(model.model.layers):
            mods = {n: m for n, m in layer.named_modules() if n.rsplit(".", 1)[-1] in LINEAR}
            norms = {n: ActNorm(m.in_features) for n, m in mods.items()}
            hs = [m.register_forward_hook(lambda _m, i, _o, a=norms[n]: a.add(i[0])) for n, m in mods.items()]
            for b in ids.split(batch):
                model(input_ids=b, use_cache=False)
            for h in hs:
                h.remove()
            for n, m in mods.items():
                m.weight[row_mask_ref(wanda_scores(m.weight, norms[n].norm()), sparsity)] = 0
                out[f"model.layers.{li}.{n}.weight"] = m.weight.clone()
    return out


def test_wanda_stage_unstructured(tiny_model_dir: Path, calibration: Path, tmp_path: Path) -> None:
    params = {"method": "wanda", "pattern": "unstructured", "sparsity": 0.5,
              "calibration": {"nsamples": 6, "seqlen": 32}, "batch_size": 4}
    outcome, ws, events = _prune(tmp_path, tiny_model_dir, calibration, params)
    assert outcome == "ok", [e for e in events if e["kind"] in ("warning", "job_finished")]
    out_dir = ws.artifact_path("prune", "model")
    out, base = open_checkpoint(out_dir), open_checkpoint(tiny_model_dir)
    ref = _reference_wanda(tiny_model_dir, calibration, 0.5, 6, 32, 4)
    assert len(ref) == 7 * 2
    for name in base.names():
        got = out.get(name)
        if name in ref:
            row_sparsity = (got == 0).float().mean(dim=1)
            assert ((row_sparsity - 0.5).abs() <= 0.01).all(), name
            mismatch = ((got == 0) != (ref[name] == 0)).float().mean()
            assert mismatch == 0, f"{name}: mask differs from the sequential reference on {mismatch:.2%}"
            assert torch.allclose(got, ref[name])
        else:
            assert torch.equal(got, base.get(name)), name
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert sha256_file(out_dir / f) == sha256_file(tiny_model_dir / f)
    record = json.loads(ws.ledger_path.read_text().splitlines()[-1])
    assert record["benchmark"] == "prune" and record["model_hash"] == ws.manifest("prune", "model")["sha256"]
    assert abs(record["metrics"]["sparsity"] - 0.5) < 0.01 and record["dataset_hash"] == sha256_file(calibration)
    assert set(record["per_tensor"]) == set(ref)


def test_wanda_stage_two_four(tiny_model_dir: Path, calibration: Path, tmp_path: Path) -> None:
    params = {"method": "wanda", "pattern": "2:4", "sparsity": 0.5, "calibration": {"nsamples": 4, "seqlen": 16}}
    outcome, ws, _ = _prune(tmp_path, tiny_model_dir, calibration, params)
    assert outcome == "ok"
    out = open_checkpoint(ws.artifact_path("prune", "model"))
    names = [n for n in out.names() if n.split(".")[-2] in LINEAR and n.endswith(".weight")]
    for name in names:
        w = out.get(name)
        assert ((w == 0).reshape(w.shape[0], -1, 4).sum(-1) >= 2).all(), name


@pytest.mark.parametrize("sparsity", [0.3, 0.6])
def test_magnitude_stage_target_sparsity_per_row(sparsity: float, tiny_model_dir: Path, calibration: Path,
                                                 tmp_path: Path) -> None:
    params = {"method": "magnitude", "pattern": "unstructured", "sparsity": sparsity}
    outcome, ws, _ = _prune(tmp_path, tiny_model_dir, calibration, params)
    assert outcome == "ok"
    out, base = open_checkpoint(ws.artifact_path("prune", "model")), open_checkpoint(tiny_model_dir)
    for name in (n for n in base.names() if n.split(".")[-2] in LINEAR and n.endswith(".weight")):
        w, w0 = out.get(name), base.get(name)
        assert (((w == 0).float().mean(dim=1) - sparsity).abs() <= 0.01).all(), name
        assert torch.equal(w == 0, row_mask_ref(w0.abs(), sparsity))


def test_params_and_bad_calibration(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="sparsity must be 0.5"):
        Params(method="magnitude", pattern="2:4", sparsity=0.3)
    with pytest.raises(ValidationError, match="needs a 'calibration' block"):
        Params(method="wanda", pattern="unstructured", sparsity=0.5)
    with pytest.raises(ValidationError, match="sparsity"):
        Params(method="magnitude", pattern="unstructured")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"prompt": "no text"}\n')
    outcome, _, events = _prune(tmp_path, tiny_model_dir, bad, {"method": "wanda", "pattern": "unstructured",
                                                                 "sparsity": 0.5,
                                                                 "calibration": {"nsamples": 2, "seqlen": 4}})
    assert outcome == "failed" and "bad.jsonl:2: expected an object with a string 'text' field" in events[-1]["error"]
