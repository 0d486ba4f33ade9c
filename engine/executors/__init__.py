"""Executors: where a stage's process runs. ``local`` starts it as a detached process group on
this machine (the default); ``slurm`` submits it with ``sbatch`` to a cluster whose nodes see the
workspace on a shared filesystem.

The supervisor sees a job as a *handle* rebuilt from the ``identity`` dict journaled at launch:
``alive()``, ``signal_group(sig)``, ``status()`` (the scheduler's word on it, e.g. ``PENDING
(Resources)``; None where there is none) and ``end_reason()``. Progress and outcome always come
from the job's own JSONL log, whichever executor ran it, so a re-attached supervisor, ``pmat
status`` and the console read every job the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.events import EventWriter
from engine.procs import ProcIdentity, spawn_detached
from engine.workspace import Workspace

EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class Resources:
    """What one job asks of its executor (from its spec entry and admission)."""

    memory_bytes: int
    time_limit_s: float
    gpus: int = 0                        # devices to allocate (0: CPU only)
    partition: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra environment (CUDA_VISIBLE_DEVICES...)


class JobHandle(Protocol):
    executor: str

    def alive(self) -> bool: ...
    def signal_group(self, sig: int) -> bool: ...
    def status(self) -> str | None: ...
    def end_reason(self) -> str | None: ...
    def as_dict(self) -> dict[str, Any]: ...


class Executor(Protocol):
    name: str

    def submit(self, job_id: str, argv: list[str], *, cwd: Path, log_path: Path, res: Resources,
               keep_fds: tuple[int, ...] = ()) -> JobHandle: ...


@dataclass(frozen=True)
class LocalJob(ProcIdentity):
    """A detached process group on this machine (pid + start ticks + boot id)."""

    executor = "local"

    def status(self) -> str | None:
        return None

    def end_reason(self) -> str | None:
        return None

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "executor": "local"}


class LocalExecutor:
    name = "local"

    def submit(self, job_id: str, argv: list[str], *, cwd: Path, log_path: Path, res: Resources,
               keep_fds: tuple[int, ...] = ()) -> LocalJob:
        """``keep_fds``: inherited by the job (the supervisor's per-job lock, held while it lives)."""
        import os

        env = {**os.environ, **res.env} if res.env else None
        ident = spawn_detached(argv, log_path=log_path, cwd=cwd, env=env, keep_fds=keep_fds)
        return LocalJob(ident.pid, ident.start_ticks, ident.boot_id)


@dataclass(frozen=True)
class Unsubmitted:
    """A job its executor refused (sbatch's error): never alive; its log says why it failed."""

    executor: str
    error: str

    def alive(self) -> bool:
        return False

    def signal_group(self, sig: int) -> bool:
        return False

    def status(self) -> str | None:
        return "not submitted"

    def end_reason(self) -> str | None:
        return self.error

    def as_dict(self) -> dict[str, Any]:
        return {"executor": self.executor, "unsubmitted": self.error}


def launch_job(spec: Any, stage: str, job_id: str, argv: list[str], *, ws: Workspace, reservation: int,
               gpus: list[int], keep_fds: tuple[int, ...] = ()) -> JobHandle:
    """Start a job through its stage's executor (``stages.X.executor``, else ``settings.executor``)
    with the spec's resources. A submission the executor refuses ends the job's log with
    ``job_finished failed`` in the executor's words, so the attempt fails visibly and is retried
    once the spec is fixed."""
    entry, settings = spec.stages[stage], spec.settings
    name = entry.executor or settings.executor
    procs = entry.gpus or 1  # ranks or engines, each with the stage's per-process estimate
    res = Resources(
        memory_bytes=reservation * procs,
        time_limit_s=3600 * (entry.time_limit_h or entry.duration_h * settings.slurm.time_factor),
        gpus=0 if entry.device == "cpu" else entry.gpus or int(entry.device.startswith("cuda")),
        partition=entry.partition,
        # NVML's indices (admission) are PCI bus order; CUDA's default order may differ
        env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))} if gpus else {},
    )
    executor = get_executor(name, settings)
    try:
        return executor.submit(job_id, argv, cwd=ws.root, log_path=ws.logs_dir / "jobs" / f"{job_id}.out", res=res,
                               keep_fds=keep_fds)
    except RuntimeError as exc:
        with EventWriter(ws.job_log(job_id)) as events:
            events.emit("job_finished", outcome="failed", error=f"{name} executor: {exc}")
        return Unsubmitted(name, str(exc))


def job_handle(identity: dict[str, Any]) -> JobHandle:
    """The handle of a journaled identity (a dict without ``executor`` is a local process)."""
    if "unsubmitted" in identity:
        return Unsubmitted(str(identity.get("executor")), str(identity["unsubmitted"]))
    if identity.get("executor") == "slurm":
        from engine.executors.slurm import SlurmJob

        return SlurmJob.from_dict(identity)
    return LocalJob.from_dict(identity)


def get_executor(name: str, settings: Any = None) -> Executor:
    """``local`` or ``slurm`` (with the spec's ``settings.slurm``)."""
    if name == "local":
        return LocalExecutor()
    if name == "slurm":
        from engine.executors.slurm import SlurmExecutor

        return SlurmExecutor(getattr(settings, "slurm", None))
    raise ValueError(f"unknown executor {name!r} (expected one of {', '.join(EXECUTORS)})")
