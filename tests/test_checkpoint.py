"""Streamed checkpoint I/O: round trips, sharding, side files byte-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.models.checkpoint import open_checkpoint
from engine.models.checkpoint_writer import ShardedWriter, copy_side_files
from engine.models.files import INDEX_FILE, SINGLE_FILE
from engine.workspace import sha256_file


def _copy_model(src: Path, dst: Path, max_shard_bytes: int) -> list[Path]:
    reader = open_checkpoint(src)
    with ShardedWriter(dst, max_shard_bytes) as w:
        for name in reader.names():
            w.add(name, reader.get(name))
    copy_side_files(src, dst)
    return sorted(dst.glob("*.safetensors"))


def test_reader_single_file(tiny_model_dir: Path) -> None:
    reader = open_checkpoint(tiny_model_dir)
    ref = load_file(tiny_model_dir / SINGLE_FILE)
    assert sorted(reader.names()) == sorted(ref)
    for name, t in ref.items():
        assert reader.shape(name) == tuple(t.shape)
        assert reader.dtype(name) == t.dtype
        assert torch.equal(reader.get(name), t)
    assert reader.config["model_type"] == "qwen2"
    with pytest.raises(KeyError, match="no tensor named"):
        reader.get("nope")


def test_sharded_round_trip_and_transformers_loads_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sharded"
    shards = _copy_model(tiny_model_dir, out, max_shard_bytes=40_000)
    assert len(shards) > 2
    index = json.loads((out / INDEX_FILE).read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in load_file(tiny_model_dir / SINGLE_FILE).values()
    )
    assert not list(out.glob(".*"))  # no temporary files left
    a = open_checkpoint(tiny_model_dir)
    b = open_checkpoint(out)
    assert sorted(a.names()) == sorted(b.names())
    for name in a.names():
        assert torch.equal(a.get(name), b.get(name))
    m1 = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    m2 = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(m1(ids).logits, m2(ids).logits)
    # Re-shard the sharded copy into one file: index disappears, content is the same.
    single = tmp_path / "single"
    assert [p.name for p in _copy_model(out, single, max_shard_bytes=1 << 30)] == [SINGLE_FILE]
    assert not (single / INDEX_FILE).exists()


def test_bf16_and_oversized_tensor(tmp_path: Path) -> None:
    out = tmp_path / "o"
    big = torch.randn(64, 64).to(torch.bfloat16)
    with ShardedWriter(out, max_shard_bytes=1000) as w:
        w.add("small", torch.ones(3, dtype=torch.bfloat16))
        w.add("big", big)  # larger than a shard: gets its own
        w.add("tail", torch.arange(5))
    r = open_checkpoint(out)
    assert r.dtype("big") == torch.bfloat16 and torch.equal(r.get("big"), big)
    assert torch.equal(r.get("tail"), torch.arange(5))
    assert len(list(out.glob("*.safetensors"))) == 3


def test_writer_refuses_duplicates_and_cleans_up_on_error(tmp_path: Path) -> None:
    out = tmp_path / "o"
    with pytest.raises(ValueError, match="written twice"):
        with ShardedWriter(out, max_shard_bytes=16) as w:
            w.add("a", torch.zeros(8))
            w.add("a", torch.zeros(8))
    assert list(out.iterdir()) == []


def test_side_files_byte_identical(tiny_model_dir: Path, tmp_path: Path) -> None:
    copied = copy_side_files(tiny_model_dir, tmp_path / "o")
    for required in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert required in copied
    present = {p.name for p in tiny_model_dir.iterdir() if not p.name.endswith(".safetensors")}
    assert present <= set(copied), f"side files not copied: {present - set(copied)}"
    for name, digest in copied.items():
        assert sha256_file(tmp_path / "o" / name) == digest == sha256_file(tiny_model_dir / name)


def test_bad_checkpoint_dirs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a safetensors checkpoint"):
        open_checkpoint(tmp_path)
    (tmp_path / INDEX_FILE).write_text(json.dumps({"weight_map": {"w": "gone.safetensors"}}))
    with pytest.raises(ValueError, match="shards missing"):
        open_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="no config.json"):
        copy_side_files(tmp_path / "nothing", tmp_path / "o")


def test_layout_mode_writes_through_in_any_order(tiny_model_dir: Path, tmp_path: Path) -> None:
    reader = open_checkpoint(tiny_model_dir)
    names = reader.names()
    layout = [(n, reader.dtype(n), reader.shape(n)) for n in names]
    out = tmp_path / "laid"
    scratch = torch.empty(0)
    with ShardedWriter(out, max_shard_bytes=40_000, layout=layout) as w:
        for name in reversed(names):
            t = reader.get(name)
            scratch = t.clone()
            w.add(name, scratch)
            scratch.zero_()  # reusing the memory after add must not change what was written
    buffered = tmp_path / "buffered"
    _copy_model(tiny_model_dir, buffered, max_shard_bytes=40_000)
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(p.name for p in buffered.glob("*.safetensors"))
    for p in buffered.glob("*.safetensors"):
        assert (out / p.name).read_bytes() == p.read_bytes()  # same layout, same bytes
    assert (out / INDEX_FILE).read_text() == (buffered / INDEX_FILE).read_text()


def test_layout_mode_errors(tmp_path: Path) -> None:
    layout = [("a", torch.float32, (4,)), ("b", torch.bfloat16, (2, 2))]
    with pytest.raises(ValueError, match="not in the layout"):
        with ShardedWriter(tmp_path / "o1", 1 << 20, layout=layout) as w:
            w.add("c", torch.zeros(4))
    with pytest.raises(ValueError, match="layout says"):
        with ShardedWriter(tmp_path / "o2", 1 << 20, layout=layout) as w:
            w.add("a", torch.zeros(4, dtype=torch.float16))
    with pytest.raises(ValueError, match="never written: b"):
        with ShardedWriter(tmp_path / "o3", 1 << 20, layout=layout) as w:
            w.add("a", torch.zeros(4))
    for d in ("o1", "o2", "o3"):
        assert list((tmp_path / d).iterdir()) == []


def test_read_into_and_copy_from(tiny_model_dir: Path, tmp_path: Path) -> None:
    reader = open_checkpoint(tiny_model_dir)
    names = reader.names()
    out = tmp_path / "o"
    with ShardedWriter(out, 40_000, layout=[(n, reader.dtype(n), reader.shape(n)) for n in names]) as w:
        for i, name in enumerate(names):
            if i % 2:
                w.copy_from(reader, name)
            else:
                buf = torch.full(reader.shape(name), 7.0, dtype=reader.dtype(name))
                assert reader.read_into(name, buf) is buf and torch.equal(buf, reader.get(name))
                w.add(name, buf)
    copied = open_checkpoint(out)
    for name in names:
        assert torch.equal(copied.get(name), reader.get(name))
    with pytest.raises(ValueError, match="buffer is"):
        reader.read_into(names[0], torch.empty(3))


def test_safetensors_header_errors_name_the_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Issue 21 item 8: the safetensors library's header errors name no file; ours do."""
    import shutil

    from engine.models.files import check_model_dir

    bad = tmp_path / "m"
    shutil.copytree(tiny_model_dir, bad)
    weights = bad / "model.safetensors"
    raw = weights.read_bytes()
    for damaged, expected in ((raw[:4], "not a safetensors file"), (raw[:8] + b"{not json" + raw[17:], "header is not valid JSON"),
                              (raw[:-64], "truncated or corrupt")):
        weights.write_bytes(damaged)
        with pytest.raises(ValueError, match=expected) as exc:
            open_checkpoint(bad)
        assert str(exc.value).startswith(str(weights))
    weights.write_bytes(raw)
    check_model_dir(bad)
    (bad / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=r"no tokenizer \(expected tokenizer.json"):
        check_model_dir(bad)
    with pytest.raises(ValueError, match="does not exist .expected a Hugging Face checkpoint directory"):
        check_model_dir(tmp_path / "absent")
