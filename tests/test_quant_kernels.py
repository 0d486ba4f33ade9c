"""GGML quantization kernels: vectorized torch and Triton paths are byte-identical to the
reference port, and the `gguf` package's dequantizer reads our bytes to our values exactly.
The fast paths run on PMAT_TEST_DEVICE (tests/conftest.py: compiled Triton on CUDA, interpreted on CPU)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmat_kernels.quant import reference as R
from pmat_kernels.quant import vectorized as V
from pmat_kernels.quant.formats import QType

gguf = pytest.importorskip("gguf")

KINDS = ("random", "constant", "zero", "tiny", "outliers", "ints", "bf16", "partzero", "positive", "mirror")
QTYPES = [QType.Q8_0, QType.Q5_0, QType.Q4_K, QType.Q6_K]


def make_block(kind: str, seed: int, scale: float, n: int = 256) -> np.ndarray:
    """One 256-weight block of a given character (the hard cases of the C code)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * scale
    if kind == "constant":
        x = np.full(n, scale * (1 if seed % 2 else -1))
    elif kind == "zero":
        x = np.zeros(n)
    elif kind == "tiny":
        x = rng.standard_normal(n) * 10.0 ** rng.uniform(-30, -8)
    elif kind == "outliers":
        x[rng.integers(0, n, 8)] *= 10.0 ** rng.uniform(1, 3)
    elif kind == "ints":
        x = rng.integers(-4, 5, n).astype(np.float64)
    elif kind == "bf16":
        x = torch.tensor(x, dtype=torch.float32).bfloat16().float().numpy()
    elif kind == "partzero":
        x[: rng.integers(16, 200)] = 0.0
        x[200:203] = -0.0
    elif kind == "positive":
        x = np.abs(x) + scale
    elif kind == "mirror":  # second half = -first half: equal |scale| of opposite sign (tie order)
        x[n // 2 :] = -x[: n // 2]
    return x.astype(np.float32)


blocks = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 2**31), st.floats(1e-4, 1e3)),
    min_size=1,
    max_size=3,
)


def build(spec) -> np.ndarray:
    return np.concatenate([make_block(k, s, sc) for k, s, sc in spec])


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # 1e6-sized outliers overflow float32 sums, in C too
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks)
def test_vectorized_matches_reference(kernel_device, spec):
    x = build(spec)
    for qt in QTYPES:
        ref = R.QUANTIZE[qt.name](x)
        vec = V.quantize_blocks(torch.from_numpy(x).to(kernel_device), qt).reshape(-1).cpu().numpy()
        assert np.array_equal(ref, vec), f"{qt.name} bytes differ for {spec}"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_vectorized_matches_reference_on_a_large_batch(kernel_device):
    """Rare rounding paths (a 1-in-100 block once exposed torch's reciprocal-multiply division)."""
    rng = np.random.default_rng(123)
    x = np.concatenate([make_block(KINDS[i % len(KINDS)], int(rng.integers(0, 2**31)), float(10 ** rng.uniform(-4, 3)))
                        for i in range(150)])
    for qt in (QType.Q4_K, QType.Q6_K):
        ref = R.QUANTIZE[qt.name](x).reshape(-1, 144 if qt == QType.Q4_K else 210)
        vec = V.quantize_blocks(torch.from_numpy(x).to(kernel_device), qt).cpu().numpy()
        bad = np.nonzero((ref != vec).any(1))[0]
        assert bad.size == 0, f"{qt.name}: blocks {bad[:10]} differ"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks)
def test_gguf_dequantize_equals_ours(spec):
    x = build(spec)
    for qt in QTYPES:
        data = V.quantize_blocks(torch.from_numpy(x), qt).reshape(-1)
        ours = V.dequantize(data, qt, (x.size,)).numpy()
        theirs = gguf.quants.dequantize(data.numpy(), gguf.GGMLQuantizationType(int(qt))).reshape(-1)
        assert np.array_equal(bits(ours), bits(theirs)), qt.name
        assert np.array_equal(bits(ours), bits(R.DEQUANTIZE[qt.name](data.numpy()))), qt.name
        if qt in (QType.Q8_0, QType.Q5_0):  # the gguf package quantizes these two itself
            g = gguf.quants.quantize(x.reshape(-1, 256), gguf.GGMLQuantizationType(int(qt))).reshape(-1)
            assert np.array_equal(g, data.numpy()), qt.name


def test_error_is_small_for_gaussian_weights():
    x = torch.from_numpy(make_block("random", 7, 0.02, 256 * 64))
    for qt, tol in ((QType.Q8_0, 0.007), (QType.Q6_K, 0.022), (QType.Q4_K, 0.085), (QType.Q5_0, 0.05)):
        y = V.dequantize(V.quantize_blocks(x, qt), qt, x.shape)
        rel = float((y - x).norm() / x.norm())
        assert rel < tol, (qt.name, rel)


def test_quantize_2d_chunking_and_bad_input():
    torch.manual_seed(0)
    w = torch.randn(12, 512, dtype=torch.bfloat16)
    whole = V.quantize(w, QType.Q4_K, chunk_weights=1 << 20)
    rowwise = V.quantize(w, QType.Q4_K, chunk_weights=512)
    assert whole.shape == (12, 2 * 144) and torch.equal(whole, rowwise)
    assert torch.equal(V.dequantize(V.quantize(w, QType.F16), QType.F16, (12, 512)), w.float())
    w[3, 7] = float("nan")
    with pytest.raises(ValueError, match="non-finite weights in rows 3"):
        V.quantize(w, QType.Q8_0, chunk_weights=512)
    with pytest.raises(ValueError, match="not a multiple of 256"):
        V.quantize(torch.zeros(2, 64), QType.Q4_K)


def _triton_equal(x: np.ndarray, device) -> None:
    t = torch.from_numpy(x).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # masked lanes divide by zero, like C's skipped paths
        for qt in (QType.Q4_K, QType.Q6_K, QType.Q8_0):
            a = V.quantize_blocks(t, qt, "torch")
            b = V.quantize_blocks(t, qt, "triton")
            assert torch.equal(a, b), qt.name


def test_triton_matches_on_every_kind(triton_device):
    x = np.concatenate([make_block(k, i, 0.05 * (i + 1)) for i, k in enumerate(KINDS)])
    _triton_equal(x, triton_device)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 2**31), st.floats(1e-4, 1e3)),
                min_size=4, max_size=12))
def test_triton_matches_random_batches(triton_device, spec):
    _triton_equal(build(spec), triton_device)
