"""pmat_kernels.nucleus: the kept set is a stable-sort prefix, the draw is exact, Triton equals torch."""

from __future__ import annotations

import pytest
import torch

from pmat_kernels import nucleus as nu


def plain_draw(logits: torch.Tensor, c: torch.Tensor, k: torch.Tensor, tp: torch.Tensor, r: torch.Tensor) -> list[int]:
    """The module's semantics row by row in Python integers, from a stable descending sort."""
    w = nu.token_weights(logits, c)
    out = []
    for i in range(logits.shape[0]):
        order = logits[i].float().sort(descending=True, stable=True).indices.tolist()
        cum, total = [], 0
        for t in order:
            total += int(w[i, t])
            cum.append(total)
        kk, p, u = int(k[i]), int(tp[i]), int(r[i])
        target = -(-cum[kk - 1] * p // (1 << 24))
        n_p = next(j for j, m in enumerate(cum) if m >= target) + 1
        kept = order[: max(1, min(kk, n_p))]
        x = cum[len(kept) - 1] * u // (1 << 24)
        run, pick = 0, logits.shape[1] - 1
        for t in sorted(kept):  # the draw walks the kept tokens in index order
            run += int(w[i, t])
            if run > x:
                pick = t
                break
        out.append(pick)
    return out


def case(rows: int, vocab: int, scale: float, dtype: torch.dtype, seed: int, device: torch.device | str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * scale
    logits[: rows // 2] = (logits[: rows // 2] * 2).round() / 2  # many exact ties
    logits = logits.to(dtype)
    logits[logits == 0] = 0.25  # the plain sort would tie +0 and -0, which the order separates
    temp = torch.rand(rows, generator=g) + 0.3
    top_p = torch.rand(rows, generator=g) * 0.6 + 0.4
    top_p[::5] = 1.0
    top_p[1::7] = 0.0
    top_k = torch.randint(0, 40, (rows,), generator=g) * (torch.rand(rows, generator=g) < 0.5)
    c, k, tp = nu.prepare(temp, top_p, top_k, vocab)
    r = torch.randint(0, 1 << 24, (rows,), generator=g)
    return tuple(t.to(device) for t in (logits, c, k, tp, r))


@pytest.mark.parametrize("scale", [0.02, 1.0, 6.0])  # flat (huge nucleus) to peaked
def test_reference_is_a_stable_sort_prefix_drawn_exactly(scale: float) -> None:
    args = case(48, 1500, scale, torch.bfloat16, seed=int(scale * 100))
    assert nu.reference_sample(*args).tolist() == plain_draw(*args)


def test_weights_and_keys() -> None:
    x = torch.tensor([[3.0, -0.0, 0.0, float("-inf"), 1.0, float("nan")]], dtype=torch.bfloat16)
    w = nu.token_weights(x, torch.tensor([nu.LOG2E]))
    assert w[0, 0] == 1 << nu.WEIGHT_BITS and w[0, 3] == 0 and w[0, 5] == 0
    assert w[0, 1] == w[0, 2] == int(torch.exp2(torch.tensor(-3.0 * nu.LOG2E)) * 2**40)
    key = nu.order_keys(x)[0].tolist()
    assert key[0] > key[4] > key[2] > key[1] > key[3]  # 3 > 1 > +0 > -0 > -inf
    m, f = torch.tensor([(1 << 58) - 12345]), torch.tensor([(1 << 24) - 3])
    assert int(nu.floor_mul(m, f)) == int(m) * int(f) // (1 << 24)
    assert int(nu.ceil_mul(m, f)) == -(-int(m) * int(f) // (1 << 24))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_equals_reference(triton_device: torch.device, dtype: torch.dtype) -> None:
    for scale in (0.02, 4.0):
        logits, c, k, tp, r = case(10, 300, scale, dtype, seed=7, device=triton_device)
        logits[2, :200] = float("-inf")  # masked tokens weigh nothing
        logits[3] = float("-inf")  # no finite logit at all: both give the last token
        ref = nu.reference_sample(logits, c, k, tp, r)
        assert torch.equal(nu.triton_sample(logits, c, k, tp, r), ref)
        assert int(ref[2]) >= 200 and int(ref[3]) == 299


def test_backend_choice_and_bad_input(kernel_device: torch.device) -> None:
    """auto: the Triton kernel on CUDA, the reference elsewhere; either way the reference's tokens."""
    logits, c, k, tp, r = case(4, 50, 1.0, torch.bfloat16, seed=3, device=kernel_device)
    assert torch.equal(nu.sample(logits, c, k, tp, r), nu.reference_sample(logits, c, k, tp, r))
    with pytest.raises(ValueError, match="float32"):
        nu.sample(logits.float(), c, k, tp, r)
    with pytest.raises(ValueError, match="'cuda'"):
        nu.sample(logits, c, k, tp, r, backend="cuda")
