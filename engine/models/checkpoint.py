"""Streamed Hugging Face checkpoint reading: one tensor in memory at a time.

The original pipeline loaded whole 7B models to merge them (~49 GB peak, OOM-killed). Here
a reader hands out single tensors from single-file or sharded safetensors checkpoints
(``engine.models.checkpoint_writer`` writes them back, shard by shard).

Each ``get`` opens its shard afresh: the tensor is a view of a private mmap of the file
that lives exactly as long as the tensor, so the pages of processed tensors do not stay
mapped (and counted in RSS) for the rest of the run, and a tensor that passes through
unchanged is written straight from the page cache without a copy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from engine.models.files import read_layout
from engine.workspace import content_hash

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _open(path: Path):
    return safe_open(str(path), framework="pt", device="cpu")


class CheckpointReader:
    """Names, shapes and dtypes of a checkpoint's tensors; one tensor loaded per ``get``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._where, self._meta, self._spans = read_layout(self.root)
        self._config: dict[str, Any] | None = None

    def names(self) -> list[str]:
        """Tensor names in file order of the index (stable, deterministic)."""
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[self._check(name)][1]

    def dtype(self, name: str) -> torch.dtype:
        code = self._meta[self._check(name)][0]
        if code not in SAFETENSORS_DTYPES:
            raise ValueError(f"{self._where[name]}: tensor {name} has unsupported dtype {code}")
        return SAFETENSORS_DTYPES[code]

    def nbytes(self, name: str) -> int:
        return tensor_nbytes(self.dtype(name), self.shape(name))

    def total_bytes(self) -> int:
        return sum(self.nbytes(n) for n in self._where)

    def get(self, name: str) -> torch.Tensor:
        """Load one tensor (its own memory, nothing else of the shard stays resident)."""
        with _open(self._where[self._check(name)]) as fh:
            return fh.get_tensor(name)

    def span(self, name: str) -> tuple[Path, int, int]:
        """(shard file, first byte, end byte) of a tensor's data."""
        start, end = self._spans[self._check(name)]
        return self._where[name], start, end

    def read_into(self, name: str, out: torch.Tensor) -> torch.Tensor:
        """Read a tensor's bytes straight into ``out`` (contiguous CPU, same dtype and shape):
        a warm buffer reused across tensors costs no page faults, unlike a fresh tensor."""
        if (out.dtype, tuple(out.shape), out.device.type) != (self.dtype(name), self.shape(name), "cpu") or (
            not out.is_contiguous()
        ):
            raise ValueError(f"read_into {name}: buffer is {out.dtype} {tuple(out.shape)} on {out.device}, "
                             f"tensor is {self.dtype(name)} {self.shape(name)}")
        path, start, end = self.span(name)
        view = tensor_bytes(out)
        with open(path, "rb", buffering=0) as fh:
            done = 0
            while done < end - start:
                n = os.preadv(fh.fileno(), [view[done:]], start + done)
                if n <= 0:
                    raise ValueError(f"{path}: truncated inside tensor {name}")
                done += n
        return out

    def iter_shard_order(self) -> Iterator[str]:
        """Names grouped by shard, so consecutive reads touch one file."""
        by_shard: dict[Path, list[str]] = {}
        for name, shard in self._where.items():
            by_shard.setdefault(shard, []).append(name)
        for shard in sorted(by_shard):
            yield from by_shard[shard]

    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            path = self.root / "config.json"
            if not path.is_file():
                raise ValueError(f"{self.root}: no config.json")
            self._config = json.loads(path.read_text())
        return self._config

    def _check(self, name: str) -> str:
        if name not in self._where:
            raise KeyError(f"{self.root}: no tensor named {name!r}")
        return name


def open_checkpoint(root: Path | str) -> CheckpointReader:
    """Open a Hugging Face safetensors checkpoint directory (single file or sharded)."""
    return CheckpointReader(Path(root))


def tensor_nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of ``dtype`` and ``shape`` as stored (no padding in safetensors)."""
    n = dtype.itemsize
    for d in shape:
        n *= d
    return n


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor without a copy (bf16 included)."""
    flat = t.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def model_dir_hash(root: Path | str) -> str:
    """Content hash of a model dir for the ledger: its publish manifest's digest when it is
    a published artifact (no rehash of 15 GB), else computed from the files."""
    root = Path(root)
    manifest = root.parent / f"{root.name}.manifest.json"
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        if Path(m.get("path", "")).resolve() == root.resolve() and "sha256" in m:
            return str(m["sha256"])
    return content_hash(root)
