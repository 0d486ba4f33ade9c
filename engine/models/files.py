"""Checkpoint files read without torch: safetensors headers checked against their file,
the tensor layout of a (sharded) checkpoint, and whether a directory is a loadable Hugging
Face checkpoint. The supervisor and ``pmat check`` use these before anything runs, so their
errors name the file and what was expected."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER_BYTES = 100 << 20


def safetensors_header(path: Path | str) -> tuple[dict[str, Any], int]:
    """The header of a safetensors file, checked against the file's size, and where its data
    starts; ValueError naming the file and what was expected (the library names neither)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            n = int.from_bytes(fh.read(8), "little") if size >= 8 else -1
            raw = fh.read(n) if 0 <= n <= min(MAX_HEADER_BYTES, size - 8) else None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    if raw is None:
        raise ValueError(f"{path}: not a safetensors file (its 8-byte header length {n} does not fit its {size} bytes)")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: safetensors header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    data = size - 8 - n
    for name, e in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(e, dict) and e.get("dtype") in _ST_BYTES and isinstance(e.get("shape"), list) \
            and all(isinstance(d, int) and d >= 0 for d in e["shape"]) and isinstance(e.get("data_offsets"), list) \
            and len(e["data_offsets"]) == 2 and all(isinstance(o, int) for o in e["data_offsets"])
        if not ok:
            raise ValueError(f"{path}: tensor {name!r}: expected dtype, shape and data_offsets in the header, got {e!r:.200}")
        start, end = e["data_offsets"]
        want = _ST_BYTES[e["dtype"]] * math.prod(e["shape"])
        if not 0 <= start <= end <= data or end - start != want:
            raise ValueError(f"{path}: tensor {name!r}: bytes {start}..{end} of {data} do not hold a "
                             f"{e['dtype']} {tuple(e['shape'])} ({want} bytes): truncated or corrupt")
    return header, 8 + n




def read_layout(root: Path) -> tuple[dict[str, Path], dict[str, tuple[str, tuple[int, ...]]], dict[str, tuple[int, int]]]:
    """(shard of each tensor, its dtype code and shape, its byte span) of a single-file or sharded
    safetensors checkpoint, every header checked; ValueError naming the file at fault."""
    index, single = root / INDEX_FILE, root / SINGLE_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            where = {str(name): root / str(shard) for name, shard in weight_map.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{index}: not a safetensors index (need a 'weight_map'): {exc}") from None
        missing = sorted({str(p) for p in where.values() if not p.is_file()})
        if missing:
            raise ValueError(f"{index}: shards missing: {', '.join(missing)}")
    elif single.is_file():
        where = dict.fromkeys(sorted(k for k in safetensors_header(single)[0] if k != "__metadata__"), single)
    else:
        raise ValueError(f"{root}: no {SINGLE_FILE} or {INDEX_FILE} (not a safetensors checkpoint)")
    meta: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans: dict[str, tuple[int, int]] = {}
    for shard in sorted(set(where.values())):
        header, data_start = safetensors_header(shard)
        for name, entry in header.items():
            if name != "__metadata__" and where.get(name) == shard:
                meta[name] = (entry["dtype"], tuple(entry["shape"]))
                start, end = entry["data_offsets"]
                spans[name] = (data_start + start, data_start + end)
    absent = sorted(n for n in where if n not in meta)
    if absent:
        raise ValueError(f"{root}: index names tensors absent from their shard: {', '.join(absent[:10])}")
    return where, meta, spans


def check_model_dir(root: Path | str) -> None:
    """A Hugging Face checkpoint directory a stage can load: config.json, a tokenizer and
    readable safetensors weights. ValueError naming the file and what was expected."""
    root = Path(root)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise ValueError(f"{root}: {what} (expected a Hugging Face checkpoint directory: config.json, tokenizer, safetensors)")
    cfg = root / "config.json"
    try:
        config = json.loads(cfg.read_text())
    except FileNotFoundError:
        raise ValueError(f"{root}: no config.json (expected a Hugging Face checkpoint directory)") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{cfg}: unreadable or not JSON: {exc}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{cfg}: expected a JSON object with 'model_type'")
    tok = root / "tokenizer.json"
    if tok.is_file():
        try:
            json.loads(tok.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{tok}: unreadable or not JSON: {exc}") from None
    elif not (root / "tokenizer.model").is_file() and not ((root / "vocab.json").is_file() and (root / "merges.txt").is_file()):
        raise ValueError(f"{root}: no tokenizer (expected tokenizer.json, tokenizer.model, or vocab.json + merges.txt)")
    read_layout(root)
