"""GGML block formats pmat writes: type ids, block sizes, bytes per block.

Numbers are llama.cpp's (ggml-common.h); the `gguf` package's GGML_QUANT_SIZES agrees.
"""

from __future__ import annotations

from enum import IntEnum


class QType(IntEnum):
    """GGML tensor type ids (the value stored in a GGUF tensor info)."""

    F32 = 0
    F16 = 1
    Q5_0 = 6
    Q8_0 = 8
    Q4_K = 12
    Q6_K = 14


# type -> (weights per block, bytes per block)
BLOCK: dict[QType, tuple[int, int]] = {
    QType.F32: (1, 4),
    QType.F16: (1, 2),
    QType.Q5_0: (32, 22),  # fp16 d, u32 high bits, 16 bytes of low nibbles
    QType.Q8_0: (32, 34),  # fp16 d, 32 int8
    QType.Q4_K: (256, 144),  # fp16 d, fp16 dmin, 12 bytes 6-bit scales/mins, 128 bytes nibbles
    QType.Q6_K: (256, 210),  # 128 low nibbles, 64 high 2-bit pairs, 16 int8 scales, fp16 d
}

QK_K = 256
MAGIC = 12582912.0  # 1.5 * 2**23: float32 add of this rounds to an integer (ggml nearest_int)
GROUP_MAX_EPS = 1e-15  # ggml's "all zero" threshold (compared in float32)


def row_bytes(qtype: QType, n_per_row: int) -> int:
    """Bytes of one row of ``n_per_row`` weights; the row must fill whole blocks."""
    block, size = BLOCK[qtype]
    if n_per_row % block:
        raise ValueError(f"{qtype.name}: row of {n_per_row} weights is not a multiple of {block}")
    return n_per_row // block * size


def parse_qtype(name: str) -> QType:
    """'q4_k' / 'Q4_K' -> QType.Q4_K, with a one-line error naming the choices."""
    try:
        return QType[name.upper()]
    except KeyError:
        raise ValueError(f"unknown GGML type {name!r} (one of {', '.join(t.name for t in QType)})") from None
