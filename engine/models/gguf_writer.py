"""A streaming GGUF v3 writer: header and tensor table first, then one tensor at a time.

The layout (offsets, padding) follows from the tensor table alone, so a big model is
written without holding more than one tensor, and a killed export can continue at the
first tensor it had not finished: the bytes before it are already final.
"""

from __future__ import annotations

import os
import struct
from enum import IntEnum
from pathlib import Path
from typing import Any

from pmat_kernels.quant.formats import QType, row_bytes

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32


class GValue(IntEnum):
    """GGUF metadata value types."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR = {
    GValue.UINT8: "<B", GValue.INT8: "<b", GValue.UINT16: "<H", GValue.INT16: "<h",
    GValue.UINT32: "<I", GValue.INT32: "<i", GValue.FLOAT32: "<f", GValue.BOOL: "<?",
    GValue.UINT64: "<Q", GValue.INT64: "<q", GValue.FLOAT64: "<d",
}


def _string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _value(vtype: GValue, value: Any) -> bytes:
    if vtype == GValue.STRING:
        return _string(value)
    if vtype == GValue.ARRAY:
        etype, items = value
        body = b"".join(_value(etype, v) for v in items)
        return struct.pack("<IQ", int(etype), len(items)) + body
    return struct.pack(_SCALAR[vtype], value)


def _pad(n: int) -> int:
    return -n % ALIGNMENT


def tensor_nbytes(shape: tuple[int, ...], qtype: QType) -> int:
    """Bytes of a tensor of torch ``shape`` (rows along the last dim) stored as ``qtype``."""
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return rows * row_bytes(qtype, shape[-1])


class GGUFStreamWriter:
    """Write ``kv`` and the table of ``tensors`` (name, torch shape, type), then their data.

    ``start`` > 0 reopens a partial file written with the same table and continues at
    tensor ``start`` (the caller checks that the table is the same).
    """

    def __init__(self, path: Path | str, kv: list[tuple[str, GValue, Any]],
                 tensors: list[tuple[str, tuple[int, ...], QType]], start: int = 0) -> None:
        self.path = Path(path)
        head = bytearray(GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(kv)))
        for key, vtype, value in kv:
            head += _string(key) + struct.pack("<I", int(vtype)) + _value(vtype, value)
        self.names = [n for n, _, _ in tensors]
        self.sizes = [tensor_nbytes(s, q) for _, s, q in tensors]
        offset = 0
        self.offsets: list[int] = []
        for (name, shape, qtype), size in zip(tensors, self.sizes, strict=True):
            self.offsets.append(offset)
            dims = tuple(reversed(shape))  # GGUF lists ne[0] (the row length) first
            head += _string(name) + struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
            head += struct.pack("<IQ", int(qtype), offset)
            offset += size + _pad(size)
        head += b"\0" * _pad(len(head))
        self.data_start = len(head)
        self.total_bytes = self.data_start + offset
        self.next = start
        if start:
            self._fh = open(self.path, "r+b")
            self._fh.truncate(self.data_start + self.offsets[start])
            self._fh.seek(self.data_start + self.offsets[start])
        else:
            self._fh = open(self.path, "wb")
            self._fh.write(head)

    def write(self, name: str, data: bytes | memoryview) -> None:
        """Append the next tensor's bytes (must be the next name in the table)."""
        i = self.next
        if i >= len(self.names) or self.names[i] != name:
            want = self.names[i] if i < len(self.names) else "nothing"
            raise ValueError(f"{self.path}: expected tensor {want}, got {name}")
        if len(data) != self.sizes[i]:
            raise ValueError(f"{self.path}: tensor {name} has {len(data)} bytes, table says {self.sizes[i]}")
        self._fh.write(data)
        self._fh.write(b"\0" * _pad(self.sizes[i]))
        self.next += 1

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self.next != len(self.names):
            raise ValueError(f"{self.path}: {len(self.names) - self.next} tensors not written")
        self.sync()
        self._fh.close()

    def abort(self) -> None:
        self._fh.close()
