"""Admission per GPU: a job that asks for N GPUs starts only when N of them each have its per-GPU
need free, after what running jobs have reserved there and not yet allocated.

Each rank of a DDP job and each engine of a data-parallel stage holds a whole copy of the model,
so the stage's memory estimate is what every one of its GPUs must hold. A GPU with unified memory
(GB10: NVML reports no device memory) draws on the host's memory, which host admission already
counts. Pure functions over the probed GPUs (``engine.memory.gpu_info``): the supervisor passes
what it knows, the tests pass what they like.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.memory import GIB, GpuInfo, gpu_info


def uses_cuda(device: str, gpus: list[GpuInfo]) -> bool:
    """Whether a job with this spec device runs on GPUs here (``auto``: when there are any)."""
    return device.startswith("cuda") or (device == "auto" and bool(gpus))


def held_bytes(running: Iterable[tuple[list[int], int, int | None]]) -> dict[int, int]:
    """Per GPU index, what running jobs reserved and have not allocated yet: ``running`` holds, per
    job, (its GPU indices, its per-GPU reservation, the GPU bytes it reports using or None)."""
    held: dict[int, int] = {}
    for indices, reservation, used in running:
        for i in indices:
            held[i] = held.get(i, 0) + max(0, reservation - (used or 0))
    return held


def free_bytes(gpu: GpuInfo, held: int, margin: int) -> int | None:
    """Bytes a new job may claim on ``gpu``; None where the GPU's memory is the host's (unified)."""
    if gpu.unified or gpu.total is None or gpu.used is None:
        return None
    return gpu.total - gpu.used - held - margin


def pick_gpus(want: int, need: int, gpus: list[GpuInfo], held: dict[int, int], margin: int) -> list[int] | str:
    """The indices of ``want`` GPUs with ``need`` bytes free each (the roomiest first, ties by
    index, returned sorted), or one line saying why the job waits."""
    if want <= 0:
        return []
    if len(gpus) < want:
        return f"needs {want} GPUs; this machine has {len(gpus)}"
    free = [(free_bytes(g, held.get(i, 0), margin), i) for i, g in enumerate(gpus)]
    fits = [(f, i) for f, i in free if f is None or f >= need]
    if len(fits) < want:
        seen = ", ".join(f"gpu{i} {max(f, 0) / GIB:.1f}" for f, i in free if f is not None)
        return (f"needs {want} GPUs with {need / GIB:.1f} GiB free each (+{margin / GIB:.1f} GiB margin); "
                f"{len(fits)} have it (GiB free: {seen})")
    fits.sort(key=lambda fi: (-(fi[0] if fi[0] is not None else float("inf")), fi[1]))
    return sorted(i for _, i in fits[:want])


def admit_gpus(entry: Any, executor: str, running: Iterable[Any], need: int, margin: int) -> list[int] | str:
    """The supervisor's question for a ready stage: the GPU indices it gets (``[]``: no per-GPU
    admission: ``gpus`` unset, a CPU device, or Slurm, which allocates GPUs itself), or why it
    waits. ``running`` holds the running attempts (their identity names their GPUs)."""
    if executor != "local" or not entry.gpus:
        return []
    gpus = gpu_info()
    if not uses_cuda(entry.device, gpus):
        return []
    held = held_bytes((a.identity.get("gpus") or [], a.reservation, a.gpu) for a in running if a.identity)
    return pick_gpus(entry.gpus, need, gpus, held, margin)
