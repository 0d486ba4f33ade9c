"""pmat_kernels.decode_attention: the Triton path equals the torch reference; the reference equals SDPA.
Tensors live on PMAT_TEST_DEVICE (tests/conftest.py): the compiled kernel gets CUDA tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pmat_kernels.decode_attention import decode_attention, reference_decode_attention


def inputs(rows: int, heads: int, kv: int, d: int, slots: int, seed: int, device: torch.device):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, heads, d, generator=g)
    k, v = torch.randn(rows, kv, slots, d, generator=g), torch.randn(rows, kv, slots, d, generator=g)
    lengths = torch.randint(1, slots + 1, (rows,), generator=g)
    lengths[0], lengths[-1] = 1, slots  # one slot, and every slot
    return q.to(device), k.to(device), v.to(device), lengths.to(device)


def test_reference_equals_masked_sdpa(kernel_device: torch.device) -> None:
    q, k, v, lengths = inputs(5, 6, 2, 16, 40, seed=0, device=kernel_device)
    slot = torch.arange(40, device=kernel_device)
    mask = torch.where(slot[None, :] < lengths[:, None], 0.0, float("-inf"))[:, None, None, :]
    want = F.scaled_dot_product_attention(q[:, :, None], k.repeat_interleave(3, 1), v.repeat_interleave(3, 1),
                                          attn_mask=mask, scale=0.25)[:, :, 0]
    assert torch.allclose(reference_decode_attention(q, k, v, lengths, 0.25), want, atol=1e-5)


@pytest.mark.parametrize("heads, kv, d, slots", [(6, 2, 16, 40), (4, 4, 32, 17), (7, 1, 16, 50)])
def test_triton_equals_reference(triton_device: torch.device, heads: int, kv: int, d: int, slots: int) -> None:
    q, k, v, lengths = inputs(4, heads, kv, d, slots, seed=heads + slots, device=triton_device)
    got = decode_attention(q, k, v, lengths, d ** -0.5)
    assert torch.allclose(got, reference_decode_attention(q, k, v, lengths, d ** -0.5), atol=1e-5)
    # slots past a row's length never count, whatever they hold
    k2, v2 = k.clone(), v.clone()
    for r, n in enumerate(lengths.tolist()):
        k2[r, :, n:], v2[r, :, n:] = 1e4, float("nan")
    assert torch.allclose(decode_attention(q, k2, v2, lengths, d ** -0.5), got, atol=1e-6)


def test_bad_shapes_are_refused(kernel_device: torch.device) -> None:
    q, k, v, lengths = inputs(2, 6, 4, 16, 8, seed=1, device=kernel_device)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        decode_attention(q, k, v, lengths, 0.25)


def test_shared_prefix_reads_the_source_row(triton_device: torch.device) -> None:
    """Rows of one prompt read its prefix from the group's first row; slots past the prefix and
    rows that share nothing stay their own."""
    q, k, v, lengths = inputs(6, 6, 2, 16, 40, seed=3, device=triton_device)
    plen = torch.tensor([10, 10, 10, 7, 7, 0], device=triton_device)
    src = torch.tensor([0, 0, 0, 3, 3, 5], device=triton_device)
    for r in range(6):  # what the engine guarantees: equal prefix copies
        k[r, :, : plen[r]], v[r, :, : plen[r]] = k[src[r], :, : plen[r]], v[src[r], :, : plen[r]]
    lengths = torch.maximum(lengths, plen + 1)
    want = reference_decode_attention(q, k, v, lengths, 0.25)
    # followers' own prefix copies are never read: poison them
    k2, v2 = k.clone(), v.clone()
    for r in (1, 2, 4):
        k2[r, :, : plen[r]], v2[r, :, : plen[r]] = float("nan"), float("nan")
    got = decode_attention(q, k2, v2, lengths, 0.25, shared=(src, plen))
    assert torch.allclose(got, want, atol=1e-5)
