"""Admission per GPU (engine/executors/gpus.py): pure functions over probed GPUs."""

from __future__ import annotations

from engine.executors.gpus import held_bytes, pick_gpus, uses_cuda
from engine.memory import GIB, GpuInfo


def gpu(total_gib: float, used_gib: float) -> GpuInfo:
    return GpuInfo("H200", False, int(total_gib * GIB), int(used_gib * GIB))


def test_two_gpus_with_headroom_are_picked_roomiest_first() -> None:
    gpus = [gpu(80, 70), gpu(80, 10), gpu(80, 30), gpu(80, 5)]
    assert pick_gpus(2, 40 * GIB, gpus, {}, GIB) == [1, 3]
    assert pick_gpus(3, 40 * GIB, gpus, {}, GIB) == [1, 2, 3]
    assert pick_gpus(0, 40 * GIB, [], {}, GIB) == []


def test_a_job_waits_until_two_gpus_have_room() -> None:
    gpus = [gpu(80, 10), gpu(80, 60)]
    why = pick_gpus(2, 40 * GIB, gpus, {}, GIB)
    assert isinstance(why, str) and why.startswith("needs 2 GPUs with 40.0 GiB free each")
    assert "1 have it" in why and "gpu1 19.0" in why
    gpus[1] = gpu(80, 20)  # the other job finished
    assert pick_gpus(2, 40 * GIB, gpus, {}, GIB) == [0, 1]


def test_reservations_of_running_jobs_count_until_allocated() -> None:
    """A job admitted on gpu0 that has not allocated yet still holds its reservation there."""
    gpus = [gpu(80, 2), gpu(80, 2)]
    held = held_bytes([([0], 50 * GIB, None)])
    assert held == {0: 50 * GIB}
    assert pick_gpus(1, 40 * GIB, gpus, held, GIB) == [1]
    assert isinstance(pick_gpus(2, 40 * GIB, gpus, held, GIB), str)
    # once it allocated 45 GiB (NVML counts that in 'used'), only the unreached 5 GiB is held
    gpus[0] = gpu(80, 47)
    assert held_bytes([([0], 50 * GIB, 45 * GIB)]) == {0: 5 * GIB}


def test_too_few_gpus_and_unified_memory() -> None:
    assert pick_gpus(2, GIB, [gpu(80, 0)], {}, 0) == "needs 2 GPUs; this machine has 1"
    gb10 = GpuInfo("GB10", True, None, None)
    assert pick_gpus(1, 100 * GIB, [gb10], {}, GIB) == [0]  # host admission covers unified memory
    assert uses_cuda("auto", [gb10]) and not uses_cuda("auto", []) and not uses_cuda("cpu", [gb10])
