"""Chunked log-probs (torch rows and Triton rows) pinned to full logits, on PMAT_TEST_DEVICE
(tests/conftest.py: compiled Triton on CUDA, interpreted on CPU)."""

from __future__ import annotations

import pytest
import torch

from pmat_kernels.logprob import (
    cross_entropy,
    reference_cross_entropy,
    reference_token_logprobs,
    token_logprobs,
)

V, H, N = 300, 24, 37  # vocab not a power of two; N not a multiple of the chunk


def _inputs(device: torch.device, seed: int = 0, ignore: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=torch.float64).float()
    weight = torch.randn(V, H, generator=g, dtype=torch.float64).float() * 0.5
    targets = torch.randint(0, V, (N,), generator=g)
    if ignore:
        targets[::5] = -100
    return hidden.to(device), weight.to(device), targets.to(device)


def _device(request: pytest.FixtureRequest, backend: str) -> torch.device:
    """The test device; a Triton case skips where no Triton kernel can run (tests/conftest.py)."""
    return request.getfixturevalue("triton_device" if backend == "triton" else "kernel_device")


def _grads(fn, hidden, weight, targets, weight_grad: bool):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(weight_grad)
    lp = fn(h, w, targets)
    coef = torch.linspace(-1.0, 2.0, N, device=hidden.device)  # a non-uniform upstream gradient, as DPO gives
    (lp * coef).sum().backward()
    return lp.detach(), h.grad, (w.grad if weight_grad else None)


@pytest.mark.parametrize("weight_grad", [True, False])
@pytest.mark.parametrize(("backend", "chunk"), [("torch", 1), ("torch", 8), ("torch", 64), ("triton", 7), ("triton", 64)])
def test_matches_full_logits_forward_and_backward(request: pytest.FixtureRequest, backend: str, weight_grad: bool,
                                                  chunk: int) -> None:
    hidden, weight, targets = _inputs(_device(request, backend))
    ref = _grads(reference_token_logprobs, hidden, weight, targets, weight_grad)
    got = _grads(lambda h, w, t: token_logprobs(h, w, t, chunk_size=chunk, backend=backend),
                 hidden, weight, targets, weight_grad)
    for r, x in zip(ref, got, strict=True):
        if r is None:
            assert x is None
            continue
        torch.testing.assert_close(x, r, rtol=1e-5, atol=1e-5)
    assert torch.all(got[0][targets == -100] == 0)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_stats_match_full_logits(request: pytest.FixtureRequest, backend: str) -> None:
    hidden, weight, targets = _inputs(_device(request, backend), 1, ignore=False)
    weight[7] = hidden[3] * 3  # make one target the argmax
    targets[3] = 7
    lp, ent, mean, top = token_logprobs(hidden, weight, targets, chunk_size=5, backend=backend, stats=True)
    logits = hidden @ weight.T
    p = logits.softmax(-1)
    torch.testing.assert_close(lp, reference_token_logprobs(hidden, weight, targets), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, -(p * logits.log_softmax(-1)).sum(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean, logits.mean(-1), rtol=1e-5, atol=1e-5)
    assert torch.equal(top, logits.argmax(-1) == targets) and bool(top[3])


def test_cross_entropy_matches_and_batched_shapes(kernel_device: torch.device) -> None:
    hidden, weight, targets = _inputs(kernel_device, 2)
    ce = cross_entropy(hidden.view(1, N, H), weight, targets.view(1, N), chunk_size=4, backend="torch")
    torch.testing.assert_close(ce, reference_cross_entropy(hidden, weight, targets), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(hidden @ weight.T, targets), rtol=1e-5, atol=1e-5)


def test_no_grad_path_and_bad_inputs(kernel_device: torch.device) -> None:
    hidden, weight, targets = _inputs(kernel_device, 3)
    with torch.no_grad():
        lp = token_logprobs(hidden, weight, targets, chunk_size=6, backend="torch")
    torch.testing.assert_close(lp, reference_token_logprobs(hidden, weight, targets), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        token_logprobs(hidden, weight, torch.full((N,), V, device=kernel_device), backend="torch")
    with pytest.raises(ValueError, match="hidden size"):
        token_logprobs(hidden[:, :5], weight, targets)
    with pytest.raises(ValueError, match="backend"):
        token_logprobs(hidden, weight, targets, backend="cuda")


@pytest.mark.parametrize("weight_grad", [True, False])
def test_bf16_inputs_stay_close_to_full_logits(kernel_device: torch.device, weight_grad: bool) -> None:
    """Low-precision slabs go through fp32 for the softmax; bf16 rounding is the only gap."""
    hidden, weight, targets = _inputs(kernel_device, 4)
    hidden, weight = hidden.bfloat16(), weight.bfloat16()
    ref = _grads(reference_token_logprobs, hidden, weight, targets, weight_grad)
    got = _grads(lambda h, w, t: token_logprobs(h, w, t, chunk_size=8, backend="torch"),
                 hidden, weight, targets, weight_grad)
    assert got[1].dtype == torch.bfloat16
    for r, x in zip(ref, got, strict=True):
        if r is not None:
            torch.testing.assert_close(x.float(), r.float(), rtol=2e-2, atol=2e-2)
