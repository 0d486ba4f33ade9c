"""Which memory admission counts against: the GPU's own memory per device, or one shared pool.

On a discrete GPU (H200) a job's weights live in device memory and its Python heap in host
memory: admission finds room on the emptiest device (NVML), and the budget counts host and
device bytes together (a job's RSS plus its CUDA allocations). Host memory is shown beside it,
not used to admit: on the rehearsal box it starts small and grows as it is used, so
MemAvailable would refuse jobs that fit. On unified memory (GB10: NVML answers NOT_SUPPORTED for device memory) CPU and GPU
draw on one pool, MemAvailable. Without a GPU, host memory alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.memory import GIB, MemorySnapshot, snapshot


@dataclass(frozen=True)
class Pool:
    mode: str          # "discrete" | "unified" | "host"
    available: int     # bytes a new job may still find (before reservations and margin)
    detail: str        # one line for the memory view

    def as_dict(self) -> dict:
        return {"mode": self.mode, "available": self.available, "detail": self.detail}


def admission_pool(snap: MemorySnapshot) -> Pool:
    """The pool admission reads, from a memory snapshot taken with its GPUs."""
    host = snap.available
    if snap.unified:
        return Pool("unified", host, f"unified memory: CPU and GPU share {host / GIB:.0f} GiB available "
                                     f"of {snap.total / GIB:.0f} GiB (NVML: device memory not supported)")
    gpus = [g for g in snap.gpus if g.total is not None and g.used is not None]
    if not gpus:
        return Pool("host", host, f"host memory: {host / GIB:.0f} GiB available (no GPU seen by NVML)")
    gpu_free = max(g.total - g.used for g in gpus)
    return Pool("discrete", gpu_free,
                f"discrete GPU: {gpu_free / GIB:.0f} GiB free on the emptiest of {len(gpus)} device(s) admits; "
                f"host {host / GIB:.0f} GiB available beside it")


def current_pool() -> Pool:
    return admission_pool(snapshot(with_gpu=True))
