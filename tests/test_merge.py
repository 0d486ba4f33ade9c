"""Stage `merge`: equal to peft's merge_and_unload, refuses what it cannot merge, flat memory."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.events import read_events
from engine.models.checkpoint import open_checkpoint
from engine.sdk.run import run_inline
from engine.stages.merge import Params, memory_estimate
from engine.workspace import Workspace, sha256_file
from pmat_kernels.lora import lora_delta_ref, lora_scale, merge_lora_

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

STAGE_DEVICE = os.environ.get("PMAT_TEST_DEVICE", "cpu")  # cuda on a GPU box: the stages' CUDA paths


@pytest.mark.parametrize("fan_in_fan_out", [False, True])
def test_lora_kernel_fast_equals_reference(kernel_device: torch.device, fan_in_fan_out: bool) -> None:
    torch.manual_seed(0)
    a, b = torch.randn(8, 48).to(kernel_device), torch.randn(32, 8).to(kernel_device)
    w = (torch.randn(48, 32) if fan_in_fan_out else torch.randn(32, 48)).to(kernel_device)
    delta = lora_delta_ref(a, b, 0.5, fan_in_fan_out)
    assert torch.allclose(merge_lora_(w.clone(), a, b, 0.5, fan_in_fan_out) - w, delta, atol=1e-5)
    assert torch.allclose(delta, ((b @ a) * 0.5).T if fan_in_fan_out else (b @ a) * 0.5, atol=1e-5)
    assert not torch.allclose(delta, torch.zeros_like(delta))
    assert lora_scale(16, 4, False) == 4.0 and lora_scale(16, 4, True) == 8.0
    with pytest.raises(ValueError, match="does not fit"):
        merge_lora_(torch.zeros(5, 5), a, b, 1.0)


def _train_adapter(base: Path, out: Path, steps: int = 4, **lora_kwargs) -> Path:
    """Train a peft LoRA adapter for a few real optimizer steps and save it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(**lora_kwargs))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "patterns": _train_adapter(
            tiny_model_dir, root / "patterns", r=8, lora_alpha=16, target_modules=LINEAR,
            rank_pattern={"q_proj": 4}, alpha_pattern={"down_proj": 4},
        ),
        "rslora_embed_saved_head": _train_adapter(
            tiny_model_dir, root / "rs", r=4, lora_alpha=8, use_rslora=True,
            target_modules=["v_proj", "up_proj", "embed_tokens"], modules_to_save=["lm_head"],
        ),
        "lora_bias": _train_adapter(
            tiny_model_dir, root / "bias", r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_bias=True,
        ),
    }


def _peft_merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


def _merge(ws_root: Path, base: Path, adapter: Path, **params) -> tuple[str, Workspace, list[dict]]:
    ws = Workspace(ws_root)
    outcome = run_inline(ws, "merge", "merge", params=params, inputs={"model": base, "adapter": adapter},
                         outputs=["model"], device=STAGE_DEVICE)
    return outcome, ws, read_events(ws.job_log("merge.1"))


@pytest.mark.parametrize("which", ["patterns", "rslora_embed_saved_head", "lora_bias"])
def test_merge_equals_peft(which: str, adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    outcome, ws, events = _merge(tmp_path / "ws", tiny_model_dir, adapters[which], max_shard_bytes=100_000)
    assert outcome == "ok", [e for e in events if e["kind"] in ("warning", "job_finished")]
    out = ws.artifact_path("merge", "model")
    ours = open_checkpoint(out)
    ref = _peft_merged(tiny_model_dir, adapters[which])
    base = load_file(tiny_model_dir / "model.safetensors")
    assert set(ours.names()) == set(base)
    changed = 0
    for name in ours.names():
        got, want = ours.get(name), ref[name]
        assert got.dtype == base[name].dtype
        rel = (got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)
        assert rel <= 1e-5, f"{name}: relative error {rel:.3g} vs peft"
        changed += not torch.equal(got, base[name])
    assert changed >= 4  # the adapter really moved weights
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert sha256_file(out / f) == sha256_file(tiny_model_dir / f)


def test_renamed_adapter_refused_with_names(adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "renamed"
    shutil.copytree(adapters["lora_bias"], bad)
    tensors = load_file(bad / "adapter_model.safetensors")
    save_file({k.replace("self_attn", "attention"): v for k, v in tensors.items()}, bad / "adapter_model.safetensors")
    outcome, ws, events = _merge(tmp_path / "ws", tiny_model_dir, bad)
    assert outcome == "failed"
    error = events[-1]["error"]
    assert error.startswith("StageFailed:") and "match no tensor" in error
    for layer in (0, 1):
        for proj in ("q_proj", "v_proj"):
            assert f"model.layers.{layer}.attention.{proj}.weight" in error
    assert not ws.artifact_path("merge", "model").exists()


def test_dora_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"], use_dora=True))
    model.save_pretrained(tmp_path / "dora")
    outcome, _, events = _merge(tmp_path / "ws", tiny_model_dir, tmp_path / "dora")
    assert outcome == "failed" and "DoRA" in events[-1]["error"]


def test_out_dtype_recorded_in_config(adapters: dict[str, Path], tiny_model_dir: Path, tmp_path: Path) -> None:
    outcome, ws, _ = _merge(tmp_path / "ws", tiny_model_dir, adapters["lora_bias"], out_dtype="bfloat16")
    assert outcome == "ok"
    out = ws.artifact_path("merge", "model")
    reader = open_checkpoint(out)
    assert {reader.dtype(n) for n in reader.names()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert sha256_file(out / "tokenizer.json") == sha256_file(tiny_model_dir / "tokenizer.json")


_RSS_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from engine.models.lora import merge_adapter
    base, adapter, out = map(Path, sys.argv[1:4])
    merge_adapter(base, adapter, out, out_dtype=None, max_shard_bytes=8 << 20)
    # VmHWM, not ru_maxrss: the latter keeps the parent's high-water mark across exec.
    print(next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")) * 1024)
    """
)


def test_merge_peak_rss_flat_in_layers(tmp_path: Path) -> None:
    """A 16-layer merge peaks no higher than a 4-layer one (+ slack << 12 layers' bytes)."""
    from engine.models.synthetic import Shape, build_adapter, build_checkpoint, tensor_shapes

    peaks = {}
    for layers in (4, 16):
        shape = Shape(768, 3072, layers, 8, 2, 4096)
        base = build_checkpoint(tmp_path / f"base{layers}", shape, max_shard_bytes=8 << 20)
        adapter = build_adapter(tmp_path / f"ad{layers}", base, shape, r=8, alpha=16)
        res = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(base), str(adapter), str(tmp_path / f"o{layers}")],
                             capture_output=True, text=True, check=True)
        peaks[layers] = int(res.stdout)
        estimate = memory_estimate(Params(), {"model": base, "adapter": adapter})
        assert peaks[layers] <= estimate, (peaks, estimate)  # admission never under-reserves
    layer_bytes = sum(2 * math.prod(d) for n, d in tensor_shapes(shape).items() if n.startswith("model.layers.0."))
    # 12 extra layers would add ~12 * layer_bytes (~205 MB) if anything accumulated.
    assert peaks[16] - peaks[4] < 3 * layer_bytes, peaks


def test_adapter_whose_config_r_differs_from_its_tensors_is_refused(adapters: dict[str, Path], tiny_model_dir: Path,
                                                                     tmp_path: Path) -> None:
    """Issue 21 item 8: r scales the delta (alpha / r); a config that lies about it merged silently."""
    bad = tmp_path / "lying"
    shutil.copytree(adapters["lora_bias"], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8}))
    outcome, ws, events = _merge(tmp_path / "ws", tiny_model_dir, bad)
    assert outcome == "failed"
    error = events[-1]["error"]
    assert f"{bad / 'adapter_config.json'}: r = 8 for" in error and "holds rank 4" in error
    assert not ws.artifact_path("merge", "model").exists()
