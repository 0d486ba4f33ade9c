"""The stage API: what a stage kind declares and the context it runs with.

A stage kind is a module ``engine.stages.<kind>`` (found by name through ``engine.kinds``) that defines::

    class Params(StageParams): ...          # every parameter, validated, no extras
    INPUTS: dict[str, str]                  # input name -> what it must be
    OUTPUTS: dict[str, str]                 # artifact name -> what it is
    def memory_estimate(params, inputs) -> int   # bytes, for admission
    def run(ctx: StageContext, params: Params) -> None

and optionally, for a stage that takes a variable number of like inputs (TIES specialists)::

    VARIADIC_INPUTS: tuple[str, int, str]   # (name prefix, at least how many, what each must be)
    def check_inputs(params, names: set[str]) -> None   # ValueError when params and inputs disagree

``run`` reads ``ctx.inputs``, keeps resume state in ``ctx.work_dir`` (it persists
across attempts), reports through ``ctx.progress/metric/checkpoint/warning``,
publishes outputs with ``ctx.publish`` and calls ``ctx.check_cancelled()`` between
units of work.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from engine.events import EventWriter, read_events
from engine.failures import StageFailed as StageFailed  # the kinds' API; defined low, see there
from engine.results import malformed, record_key
from engine.workspace import Workspace, atomic_write_json


class StageParams(BaseModel):
    """Base of every stage's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Cancelled(Exception):
    """Raised by ``check_cancelled`` once a SIGTERM arrived."""


@dataclass
class JobSpec:
    """Everything a stage process needs; written to ``jobs/<job_id>.json``."""

    job_id: str
    stage: str
    kind: str
    attempt: int
    workspace: str
    params: dict[str, Any]
    inputs: dict[str, str]
    params_hash: str
    outputs: list[str] = field(default_factory=list)
    device: str = "auto"
    seed: int = 0
    gpus: int = 1  # DDP ranks or generation engines (engine/sdk/launch.py, engine/gen/parallel.py)

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.__dict__)

    @classmethod
    def load(cls, path: Path) -> JobSpec:
        return cls(**json.loads(Path(path).read_text()))


class StageContext:
    """The handle a running stage uses to report, publish and resume."""

    def __init__(self, job: JobSpec, events: EventWriter, workspace: Workspace | None = None) -> None:
        self.job = job
        self.workspace = workspace or Workspace(Path(job.workspace))
        self.events = events
        self.inputs: dict[str, Path] = {k: Path(v) for k, v in job.inputs.items()}
        self.work_dir = self.workspace.work_dir(job.stage)
        self.seed = job.seed
        self._cancel = threading.Event()
        self.pending_results: list[dict[str, Any]] = []

    # -- identity ---------------------------------------------------------------
    @property
    def stage(self) -> str:
        return self.job.stage

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def device(self) -> str:
        """The torch device this job should use ('auto' resolves to cuda when present)."""
        if self.job.device != "auto":
            return self.job.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    # -- reporting --------------------------------------------------------------
    def progress(self, done: int | float, total: int | float | None, unit: str = "items") -> None:
        self.events.emit("progress", done=done, total=total, unit=unit)

    def metric(self, name: str, value: float, step: int | None = None, **extra: Any) -> None:
        self.events.emit("metric", name=name, value=value, step=step, **extra)

    def checkpoint(self, step: int, path: Path | str | None = None, **extra: Any) -> None:
        self.events.emit("checkpoint", step=step, path=str(path) if path else None, **extra)

    def warning(self, message: str, **extra: Any) -> None:
        self.events.emit("warning", message=message, **extra)

    def publish(self, name: str, src: Path, **meta: Any) -> Path:
        """Atomically publish ``src`` as artifact ``name`` (sha256 manifest, event)."""
        m = self.workspace.publish(self.stage, name, src, meta={"job_id": self.job_id, **meta})
        self.events.emit("artifact", name=name, path=m["path"], sha256=m["sha256"], bytes=m["bytes"])
        return Path(m["path"])

    def record_result(self, record: dict[str, Any]) -> None:
        """Hold one record for the results ledger; it is committed with the job's end.

        The job's ``job_finished`` and the ledger line are one commit (see
        ``engine.results.commit_results``): a kill before it leaves nothing, and a
        resumed attempt commits the same record (same key) exactly once.
        """
        if why := malformed(record):  # readers would ignore it: refuse it now, naming it
            raise StageFailed(f"{self.stage}: result record {record.get('benchmark')!r} refused: {why}")
        job = self.job
        key = record_key(job.stage, job.kind, job.params_hash, job.inputs, len(self.pending_results), record)
        self.pending_results.append({"job_id": self.job_id, "stage": self.stage, **record, "key": key})

    # -- resume -----------------------------------------------------------------
    def previous_events(self) -> list[dict[str, Any]]:
        """Events of this stage's earlier attempts, oldest first."""
        out: list[dict[str, Any]] = []
        for attempt in range(1, self.job.attempt):
            out.extend(read_events(self.workspace.job_log(f"{self.stage}.{attempt}")))
        return out

    def last_checkpoint(self) -> dict[str, Any] | None:
        cps = [e for e in self.previous_events() if e.get("kind") == "checkpoint"]
        return cps[-1] if cps else None

    # -- cancellation -----------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled(f"{self.stage} cancelled")
