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

from engine.procs import ProcIdentity, spawn_detached

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

    def submit(self, job_id: str, argv: list[str], *, cwd: Path, log_path: Path, res: Resources) -> JobHandle: ...


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

    def submit(self, job_id: str, argv: list[str], *, cwd: Path, log_path: Path, res: Resources) -> LocalJob:
        import os

        env = {**os.environ, **res.env} if res.env else None
        ident = spawn_detached(argv, log_path=log_path, cwd=cwd, env=env)
        return LocalJob(ident.pid, ident.start_ticks, ident.boot_id)


def job_handle(identity: dict[str, Any]) -> JobHandle:
    """The handle of a journaled identity (a dict without ``executor`` is a local process)."""
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
