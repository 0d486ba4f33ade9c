"""TIES and SLERP: hand-built kernel cases, fast == reference, and the `ties` stage end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from engine.events import read_events
from engine.models.checkpoint import open_checkpoint
from engine.models.checkpoint_writer import ShardedWriter, copy_side_files
from engine.sdk.run import run_inline
from engine.stages.ties import Params
from engine.workspace import Workspace
from pmat_kernels.ties import (
    KthLargest,
    disjoint_merge,
    elect_sign,
    global_trim_ref,
    sign_conflicts,
    slerp,
    ties_ref,
    trim_mask,
    trim_ref,
)

STAGE_DEVICE = os.environ.get("PMAT_TEST_DEVICE", "cpu")  # cuda on a GPU box: the stages' CUDA paths


@pytest.mark.parametrize("density", [0.05, 0.2, 0.35, 0.7, 1.0])
def test_trim_keeps_exactly_the_density_fraction(kernel_device: torch.device, density: float) -> None:
    x = torch.randn(37, 53).to(kernel_device)
    k = int(density * x.numel())
    fast = x * trim_mask(x, density)
    ref = trim_ref(x, density)
    assert int((fast != 0).sum()) == k == int((ref != 0).sum())
    assert torch.equal(fast, ref)
    kept = fast[fast != 0].abs()
    if k < x.numel():
        assert kept.min() >= x.abs()[fast == 0].max()  # the kept ones are the largest


def test_trim_exact_k_with_ties_at_threshold() -> None:
    x = torch.tensor([3.0, -1.0, 1.0, 1.0, -1.0, 0.5, 1.0, 2.0, 0.0, 1.0])
    for density in (0.3, 0.4, 0.5, 0.6):
        k = int(density * x.numel())
        mask = trim_mask(x, density)
        assert int(mask.sum()) == k
        assert torch.equal(x * mask, trim_ref(x, density))


def test_elected_sign_rule_and_disjoint_mean_by_hand() -> None:
    a = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0])
    b = torch.tensor([-3.0, 1.0, 0.5, 0.0, 2.0])
    assert elect_sign(torch.stack([a, b])).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]  # a zero sum elects +
    merged, agree = disjoint_merge([a, b], [1.0, 1.0], normalize=True)
    assert merged.tolist() == [-3.0, -2.0, 0.5, 0.0, 2.0]
    assert agree.tolist() == [[False, True, True, False, False], [True, False, True, False, True]]
    # Weighted: weights scale the entries, the divisor is the sum of the agreeing weights.
    merged, _ = disjoint_merge([a, b], [2.0, 1.0], normalize=True)
    assert merged.tolist() == [-3.0, -2.0, 0.5, 0.0, 2.0]  # (2*.5 + 1*.5) / 3 = .5
    merged, _ = disjoint_merge([a, b], [2.0, 1.0], normalize=False)
    assert merged.tolist() == [-3.0, -4.0, 1.5, 0.0, 2.0]
    assert sign_conflicts([a, b]) == 2


@pytest.mark.parametrize("chunk", [7, 1 << 24])
def test_global_threshold_matches_concatenated_reference(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import pmat_kernels.ties

    monkeypatch.setattr(pmat_kernels.ties, "_CHUNK", chunk)  # 7: ties and thresholds straddle chunk edges
    torch.manual_seed(0)
    tensors = [torch.randn(40, 30), torch.randn(7), torch.randn(64, 12).round(decimals=1)]
    total = sum(t.numel() for t in tensors)
    for density in (0.1, 0.5, 0.93):
        sel = KthLargest(int(density * total))
        for _ in (1, 2):
            for t in tensors:
                sel.update(t)
            sel.end_pass()
        fast = [t * sel.keep_mask(t) for t in tensors]
        ref = global_trim_ref(tensors, density)
        assert sum(int((f != 0).sum()) for f in fast) == int(density * total)
        for f, r in zip(fast, ref, strict=True):
            assert torch.equal(f, r)


def test_slerp_endpoints_and_norm() -> None:
    torch.manual_seed(1)
    a, b = torch.randn(20, 30), torch.randn(20, 30)
    assert torch.allclose(slerp(0.0, a, b), a, atol=1e-6)
    assert torch.allclose(slerp(1.0, a, b), b, atol=1e-6)
    b = b * (a.norm() / b.norm())
    assert abs(float(slerp(0.5, a, b).norm() / a.norm()) - 1) < 1e-5  # equal norms stay on the sphere
    assert torch.equal(slerp(0.3, a, a * 2), torch.lerp(a, a * 2, 0.3))  # parallel: lerp


# -- the stage ------------------------------------------------------------------------

def _perturbed(base: Path, out: Path, scale: float, seed: int) -> Path:
    reader = open_checkpoint(base)
    gen = torch.Generator().manual_seed(seed)
    with ShardedWriter(out, 1 << 30) as w:
        for name in reader.names():
            t = reader.get(name)
            w.add(name, t + scale * torch.randn(t.shape, generator=gen))
    copy_side_files(base, out)
    return out


@pytest.fixture(scope="module")
def specialists(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("specialists")
    torch.manual_seed(3)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    model.save_pretrained(root / "adapter")
    return {
        "a": _perturbed(tiny_model_dir, root / "a", 0.01, 1),
        "b": _perturbed(tiny_model_dir, root / "b", 0.01, 2),
        "c": _perturbed(tiny_model_dir, root / "c", 0.02, 3),
        "adapter": root / "adapter",
    }


def _ties(tmp: Path, base: Path, a: Path, b: Path, params: dict, **more: Path) -> tuple[Workspace, list[dict]]:
    ws = Workspace(tmp / "ws")
    outcome = run_inline(ws, "ties", "ties", params=params, inputs={"base": base, "model_a": a, "model_b": b, **more},
                         outputs=["model"], device=STAGE_DEVICE)
    events = read_events(ws.job_log("ties.1"))
    assert outcome == "ok", [e for e in events if e["kind"] in ("warning", "job_finished")]
    return ws, events


TIES = {"weights": {"model_a": 1.0, "model_b": 0.5}, "densities": {"model_a": 0.3, "model_b": 0.6},
        "lambda": 1.5, "normalize": True, "trim": "tensor"}


def test_ties_stage_per_tensor_equals_reference(specialists: dict[str, Path], tiny_model_dir: Path,
                                                tmp_path: Path) -> None:
    ws, events = _ties(tmp_path, tiny_model_dir, specialists["a"], specialists["b"], {"method": "ties", "ties": TIES})
    out = open_checkpoint(ws.artifact_path("ties", "model"))
    base, a, b = (open_checkpoint(p) for p in (tiny_model_dir, specialists["a"], specialists["b"]))
    for name in base.names():
        want = ties_ref(base.get(name), [a.get(name), b.get(name)], [1.0, 0.5], [0.3, 0.6], 1.5, True)
        assert torch.allclose(out.get(name), want, atol=1e-6), name
    record = json.loads(ws.ledger_path.read_text().splitlines()[-1])
    assert record["benchmark"] == "ties"
    assert record["model_hash"] == ws.manifest("ties", "model")["sha256"]
    m = record["metrics"]
    assert m["sign_conflicts_elected"] == 0 < m["sign_conflicts_trimmed"] < m["sign_conflicts_naive"]  # AC-007
    assert set(record["per_tensor"]) == set(base.names())
    assert any(e["kind"] == "metric" and e["name"] == "norm_drift" for e in events)
    assert (ws.artifact_path("ties", "model") / "tokenizer.json").read_bytes() == (
        tiny_model_dir / "tokenizer.json").read_bytes()


def test_ties_stage_three_specialists(specialists: dict[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    params = {**TIES, "weights": {**TIES["weights"], "model_c": 0.8}, "densities": {**TIES["densities"], "model_c": 0.5}}
    ws, _ = _ties(tmp_path, tiny_model_dir, specialists["a"], specialists["b"], {"method": "ties", "ties": params},
                  model_c=specialists["c"])
    out = open_checkpoint(ws.artifact_path("ties", "model"))
    base, a, b, c = (open_checkpoint(p) for p in (tiny_model_dir, specialists["a"], specialists["b"], specialists["c"]))
    for name in base.names():
        want = ties_ref(base.get(name), [a.get(name), b.get(name), c.get(name)], [1.0, 0.5, 0.8], [0.3, 0.6, 0.5],
                        1.5, True)
        assert torch.allclose(out.get(name), want, atol=1e-6), name
    record = json.loads(ws.ledger_path.read_text().splitlines()[-1])
    assert set(record["protocol"]["inputs"]) == {"base", "model_a", "model_b", "model_c"}
    # weights that name other specialists than the inputs: the job fails saying which
    bad = Workspace(tmp_path / "bad")
    outcome = run_inline(bad, "ties", "ties", params={"method": "ties", "ties": TIES}, outputs=["model"],
                         inputs={"base": tiny_model_dir, "model_a": specialists["a"], "model_b": specialists["b"],
                                 "model_c": specialists["c"]}, device=STAGE_DEVICE)
    finished = [e for e in read_events(bad.job_log("ties.1")) if e["kind"] == "job_finished"]
    assert outcome == "failed" and "the specialist inputs are ['model_a', 'model_b', 'model_c']" in str(finished)


def test_ties_stage_model_wide_trim_with_an_adapter(specialists: dict[str, Path], tiny_model_dir: Path,
                                                    tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    params = {"method": "ties", "ties": {**TIES, "trim": "model", "normalize": False}}
    ws, _ = _ties(tmp_path, tiny_model_dir, specialists["a"], specialists["adapter"], params)
    out = open_checkpoint(ws.artifact_path("ties", "model"))
    base, a = open_checkpoint(tiny_model_dir), open_checkpoint(specialists["a"])
    peft_b = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), specialists["adapter"])
    b_sd = peft_b.merge_and_unload().state_dict()
    names = list(base.iter_shard_order())
    base_t = [base.get(n).float() for n in names]
    trimmed_a = global_trim_ref([a.get(n) - t for n, t in zip(names, base_t, strict=True)], 0.3)
    trimmed_b = global_trim_ref([b_sd[n] - t for n, t in zip(names, base_t, strict=True)], 0.6)
    for n, t, ta, tb in zip(names, base_t, trimmed_a, trimmed_b, strict=True):
        merged, _ = disjoint_merge([ta, tb], [1.0, 0.5], normalize=False)
        assert torch.allclose(out.get(n), t + 1.5 * merged, atol=1e-6), n


def test_slerp_stage_endpoint_and_norm(specialists: dict[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    ws, _ = _ties(tmp_path / "t0", tiny_model_dir, specialists["a"], specialists["b"],
                  {"method": "slerp", "slerp": {"t": 0.0}})
    out, a = open_checkpoint(ws.artifact_path("ties", "model")), open_checkpoint(specialists["a"])
    for name in a.names():
        assert torch.allclose(out.get(name), a.get(name), atol=1e-6)
    ws, _ = _ties(tmp_path / "t5", tiny_model_dir, specialists["a"], specialists["b"],
                  {"method": "slerp", "slerp": {"t": 0.5}})
    record = json.loads(ws.ledger_path.read_text().splitlines()[-1])
    assert record["protocol"]["method"] == "slerp"
    assert record["metrics"]["norm_drift_max_abs"] < 0.05  # AC-006


def test_params_have_no_hyperparameter_defaults() -> None:
    with pytest.raises(ValidationError, match="lambda"):
        Params(method="ties", ties={k: v for k, v in TIES.items() if k != "lambda"})
    with pytest.raises(ValidationError, match="needs a 'slerp' block"):
        Params(method="slerp")
    with pytest.raises(ValidationError, match="takes no 'slerp' block"):
        Params(method="ties", ties=TIES, slerp={"t": 0.5})
    with pytest.raises(ValidationError, match="must name the same specialists"):
        Params(method="ties", ties={**TIES, "densities": {"model_a": 0.5}})
