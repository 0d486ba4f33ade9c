"""Memory headroom: MemAvailable, pressure (PSI), per-job RSS, NVML where it answers.

On the GB10 the GPU shares system memory and NVML answers NOT_SUPPORTED for
device memory: that is reported as ``unified`` and MemAvailable is the budget
for CPU and GPU alike ("used" = total - available would overstate idle GPU use).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GIB = 1 << 30


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    return out


def psi_memory() -> dict[str, float] | None:
    """avg10 of 'some' and 'full' memory pressure, or None where PSI is absent."""
    try:
        text = Path("/proc/pressure/memory").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        for f in fields:
            k, _, v = f.partition("=")
            if k == "avg10":
                out[kind] = float(v)
    return out


@dataclass
class GpuInfo:
    name: str
    unified: bool
    total: int | None
    used: int | None
    per_process: dict[int, int] = field(default_factory=dict)


def gpu_info() -> list[GpuInfo]:
    """NVML view of each GPU; empty where NVML is not installed or no GPU exists."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver: no GPUs to report
        return []
    out = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            try:
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                total, used, unified = int(mem.total), int(mem.used), False
            except pynvml.NVMLError_NotSupported:
                total, used, unified = None, None, True
            procs: dict[int, int] = {}
            try:
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                    if p.usedGpuMemory is not None:
                        procs[int(p.pid)] = int(p.usedGpuMemory)
            except pynvml.NVMLError:
                pass
            out.append(GpuInfo(str(name), unified, total, used, procs))
    finally:
        pynvml.nvmlShutdown()
    return out


@dataclass
class MemorySnapshot:
    total: int
    available: int
    psi: dict[str, float] | None
    gpus: list[GpuInfo]

    @property
    def unified(self) -> bool:
        return any(g.unified for g in self.gpus)


def snapshot(with_gpu: bool = True) -> MemorySnapshot:
    mi = meminfo()
    return MemorySnapshot(
        total=mi["MemTotal"],
        available=mi.get("MemAvailable", mi["MemFree"]),
        psi=psi_memory(),
        gpus=gpu_info() if with_gpu else [],
    )


def admission_headroom(
    available: int,
    running: list[tuple[int, int]],
    margin: int,
    budget: int | None = None,
) -> int:
    """Bytes a new job may claim.

    ``running`` holds (reservation, current rss) per running job: the part of a
    reservation a job has not reached yet is still spoken for. With a ``budget``
    (the most pmat may use on a shared box), jobs' current use counts against it.
    """
    unreached = sum(max(0, est - rss) for est, rss in running)
    free = available - unreached - margin
    if budget is not None:
        used = sum(max(est, rss) for est, rss in running)
        free = min(free, budget - used)
    return free
