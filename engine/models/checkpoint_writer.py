"""Streamed Hugging Face checkpoint writing: shards flushed at a size limit, then the index.

The original pipeline dropped the tokenizer on the way; here the side files (config,
generation config, tokenizer) are copied and verified by hash. Tensors come from
``engine.models.checkpoint`` readers one at a time, so peak memory is one shard.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from engine.models.checkpoint import (
    SAFETENSORS_DTYPES,
    CheckpointReader,
    tensor_bytes,
    tensor_nbytes,
)
from engine.models.files import INDEX_FILE, SINGLE_FILE
from engine.workspace import atomic_write_json, ensure_dir, fsync_dir, named, sha256_file

# Files a checkpoint needs besides its weights; copied byte for byte when present.
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
REQUIRED_SIDE_FILES = ("config.json",)

_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _header(entries: list[tuple[str, torch.dtype, tuple[int, ...], int, int]]) -> bytes:
    """A safetensors header (8-byte little-endian length + JSON padded to 8 bytes)."""
    obj: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    for name, dtype, shape, start, end in entries:
        obj[name] = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [start, end]}
    raw = json.dumps(obj, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


Entry = tuple[str, torch.dtype, tuple[int, ...]]


class ShardedWriter:
    """Write tensors into safetensors shards of at most ``max_shard_bytes`` plus an index.

    Two modes. Without a ``layout``, tensors are buffered until the next one would
    overflow the shard, then the shard is written (peak memory: one shard). With a
    ``layout`` (every tensor's name, dtype and shape, known up front as in a merge), the
    shard files and headers are laid out at once and ``add`` writes each tensor straight
    to its offset (``pwrite``) in any order: nothing is buffered, the caller may reuse the
    tensor's memory as soon as ``add`` returns, and the kernel writes back while the
    caller computes. Either way ``close()`` fsyncs, renames the shards to their final
    ``model-0000i-of-0000n.safetensors`` names (``model.safetensors`` when one) and writes
    the index last, so a reader never sees a half-written checkpoint.
    """

    def __init__(self, out_dir: Path | str, max_shard_bytes: int, layout: list[Entry] | None = None) -> None:
        if max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be > 0, got {max_shard_bytes}")
        self.out_dir = ensure_dir(Path(out_dir))
        self.max_shard_bytes = max_shard_bytes
        self._buffer: list[tuple[str, torch.Tensor]] = []
        self._buffered = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self._seen: set[str] = set()
        self.total_bytes = 0
        self._closed = False
        self._fds: list[int] = []
        self._slots: dict[str, tuple[int, int, torch.dtype, tuple[int, ...]]] = {}
        if layout is not None:
            self._lay_out(layout)

    def _lay_out(self, layout: list[Entry]) -> None:
        groups: list[list[Entry]] = []
        size = 0
        for name, dtype, shape in layout:
            if dtype not in _CODES:
                raise ValueError(f"{self.out_dir}: tensor {name!r} has unsupported dtype {dtype}")
            n = tensor_nbytes(dtype, tuple(shape))
            if not groups or (size and size + n > self.max_shard_bytes) or size >= self.max_shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append((name, dtype, tuple(shape)))
            size += n
        for group in groups:
            entries, offset = [], 0
            for name, dtype, shape in group:
                n = tensor_nbytes(dtype, shape)
                entries.append((name, dtype, shape, offset, offset + n))
                offset += n
            header = _header(entries)
            fd, tmp = tempfile.mkstemp(dir=self.out_dir, prefix=".shard-", suffix=".tmp")
            self._fds.append(fd)
            self._shards.append((Path(tmp), [e[0] for e in entries]))
            os.write(fd, header)
            os.ftruncate(fd, len(header) + offset)
            for name, dtype, shape, start, _ in entries:
                if name in self._slots:
                    raise ValueError(f"{self.out_dir}: tensor {name!r} twice in the layout")
                self._slots[name] = (fd, len(header) + start, dtype, shape)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write (layout) or queue (no layout) one tensor, stored as given: cast first."""
        if self._closed:
            raise RuntimeError(f"{self.out_dir}: writer already closed")
        if name in self._seen:
            raise ValueError(f"{self.out_dir}: tensor {name!r} written twice")
        if tensor.dtype not in _CODES:
            raise ValueError(f"{self.out_dir}: tensor {name!r} has unsupported dtype {tensor.dtype}")
        t = tensor.detach().to("cpu").contiguous()
        size = t.numel() * t.element_size()
        if self._slots:
            if name not in self._slots:
                raise ValueError(f"{self.out_dir}: tensor {name!r} is not in the layout")
            fd, offset, dtype, shape = self._slots[name]
            if (t.dtype, tuple(t.shape)) != (dtype, shape):
                raise ValueError(f"{self.out_dir}: {name!r} is {t.dtype} {tuple(t.shape)}, layout says {dtype} {shape}")
            view = tensor_bytes(t)
            while view:
                view = view[os.pwrite(fd, view, offset + size - len(view)) :]
        else:
            if self._buffer and self._buffered + size > self.max_shard_bytes:
                self._flush()
            self._buffer.append((name, t))
            self._buffered += size
            if self._buffered >= self.max_shard_bytes:
                self._flush()
        self._seen.add(name)
        self.total_bytes += size

    def copy_from(self, reader: CheckpointReader, name: str) -> None:
        """Copy an unchanged tensor file to file into its slot (layout mode): the kernel moves
        the bytes (copy_file_range), nothing passes through this process's memory."""
        if not self._slots:
            raise RuntimeError(f"{self.out_dir}: copy_from needs a layout")
        if name in self._seen or name not in self._slots:
            raise ValueError(f"{self.out_dir}: tensor {name!r} written twice or not in the layout")
        fd, offset, dtype, shape = self._slots[name]
        if (reader.dtype(name), reader.shape(name)) != (dtype, shape):
            raise ValueError(f"{self.out_dir}: {name!r} is {reader.dtype(name)} {reader.shape(name)}, layout says {dtype} {shape}")
        path, start, end = reader.span(name)
        with open(path, "rb", buffering=0) as fh:
            done = 0
            while done < end - start:
                n = os.copy_file_range(fh.fileno(), fd, end - start - done, start + done, offset + done)
                if n <= 0:
                    raise ValueError(f"{path}: truncated inside tensor {name}")
                done += n
        self._seen.add(name)
        self.total_bytes += end - start

    def _flush(self) -> None:
        entries, offset = [], 0
        for name, t in self._buffer:
            size = t.numel() * t.element_size()
            entries.append((name, t.dtype, tuple(t.shape), offset, offset + size))
            offset += size
        fd, tmp = tempfile.mkstemp(dir=self.out_dir, prefix=".shard-", suffix=".tmp")
        self._fds.append(fd)
        self._shards.append((Path(tmp), [name for name, _ in self._buffer]))
        with open(fd, "wb", closefd=False) as fh:
            fh.write(_header(entries))
            for _, t in self._buffer:
                fh.write(tensor_bytes(t))
        self._buffer, self._buffered = [], 0

    def close(self) -> list[Path]:
        """Flush, fsync, name the shards, write the index; returns the weight files."""
        if self._closed:
            raise RuntimeError(f"{self.out_dir}: writer already closed")
        missing = sorted(set(self._slots) - self._seen)
        if missing:
            raise ValueError(f"{self.out_dir}: {len(missing)} tensors of the layout never written: {', '.join(missing[:10])}")
        if self._buffer or not self._shards:
            self._flush()
        for fd in self._fds:
            os.fsync(fd)
            os.close(fd)
        self._fds = []
        self._closed = True
        n = len(self._shards)
        finals = (
            [self.out_dir / SINGLE_FILE]
            if n == 1
            else [self.out_dir / f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        for (tmp, _), final in zip(self._shards, finals, strict=True):
            os.chmod(tmp, 0o600)
            os.replace(tmp, final)
        if n > 1:
            weight_map = {name: final.name for (_, names), final in zip(self._shards, finals, strict=True) for name in names}
            atomic_write_json(
                self.out_dir / INDEX_FILE, {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            )
        fsync_dir(self.out_dir)
        return finals

    def abort(self) -> None:
        """Remove temporary shards after a failure."""
        for fd in self._fds:
            os.close(fd)
        for tmp, _ in self._shards:
            tmp.unlink(missing_ok=True)
        self._fds, self._buffer, self._shards, self._closed = [], [], [], True

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            if isinstance(exc, OSError) and not exc.filename:  # ENOSPC from pwrite names nothing
                raise named(exc, self.out_dir) from None
        elif not self._closed:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise


def copy_side_files(src: Path | str, dst: Path | str) -> dict[str, str]:
    """Copy config/generation/tokenizer files and verify them byte-identical by sha256.

    Returns {file name: sha256}. A missing config.json is an error; tokenizer files are
    copied when present (a checkpoint without them is allowed, but nothing is dropped).
    """
    src, dst = Path(src), ensure_dir(Path(dst))
    for req in REQUIRED_SIDE_FILES:
        if not (src / req).is_file():
            raise ValueError(f"{src}: no {req}")
    copied: dict[str, str] = {}
    for name in SIDE_FILES:
        s = src / name
        if not s.is_file():
            continue
        d = dst / name
        tmp = dst / f".{name}.tmp"
        shutil.copyfile(s, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, d)
        want, got = sha256_file(s), sha256_file(d)
        if want != got:
            raise OSError(f"{d}: copy differs from {s} (sha256 {got} != {want})")
        copied[name] = want
    fsync_dir(dst)
    return copied


def set_config_dtype(root: Path | str, dtype: torch.dtype) -> None:
    """Record a changed storage dtype in config.json (only when the output dtype differs)."""
    path = Path(root) / "config.json"
    cfg = json.loads(path.read_text())
    name = str(dtype).removeprefix("torch.")
    key = "dtype" if "dtype" in cfg or "torch_dtype" not in cfg else "torch_dtype"
    cfg[key] = name
    atomic_write_json(path, cfg)


def storage_dtype(name: str | None, source: torch.dtype) -> torch.dtype:
    """The storage dtype: the source's unless a spec names float32/float16/bfloat16."""
    if name is None:
        return source
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype {name!r}: expected one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[name]
