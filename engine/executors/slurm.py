"""The Slurm executor: a stage is one batch job (``sbatch``), tracked with ``squeue`` (``sacct``
once the job has left the queue, where accounting is configured), cancelled with ``scancel``.

The job runs the same argv a local job runs, on a node that sees the workspace at the same path
(a shared filesystem); its JSONL log is written there and read by the supervisor as for any job.
Resuming is resubmitting: the next attempt is a new batch job that resumes from the stage's work
dir. The client tools honour ``SLURM_CONF`` and the usual ``SBATCH_*``/``SLURM_*`` variables.
"""

from __future__ import annotations

import hashlib
import math
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.executors import Resources
from engine.spec import SlurmSettings

# States in which the job still holds (or waits for) its allocation.
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
QUERY_TTL_S = 2.0  # one squeue per job per poll interval at most, however many readers ask
_cache: dict[str, tuple[float, tuple[str, str, str]]] = {}


class SlurmError(RuntimeError):
    """A Slurm client tool failed; the message names the command and its stderr."""


def _tool(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]}: not found (is the Slurm client installed on this machine?)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{shlex.join(argv)}: no answer within {timeout:.0f} s") from None


def job_name(job_id: str, cwd: Path) -> str:
    """``pmat-<workspace digest>-<job id>``: unique per workspace and attempt."""
    return f"pmat-{hashlib.sha256(str(cwd).encode()).hexdigest()[:8]}-{job_id}"


def sbatch_args(job_id: str, *, cwd: Path, log_path: Path, res: Resources, settings: SlurmSettings) -> list[str]:
    """The sbatch options for one job: resources from the spec, output to the job's .out file."""
    out = ["--parsable", f"--job-name={job_name(job_id, cwd)}", f"--output={log_path}", f"--chdir={cwd}",
           "--nodes=1", "--ntasks=1", f"--mem={max(1, math.ceil(res.memory_bytes / (1 << 20)))}M",
           f"--time={max(1, math.ceil(res.time_limit_s / 60))}"]
    if res.gpus:
        out.append(f"--gpus-per-node={res.gpus}")
    partition = res.partition or settings.partition
    for flag, value in (("--partition", partition), ("--account", settings.account), ("--qos", settings.qos),
                        ("--cpus-per-task", settings.cpus_per_task)):
        if value is not None:
            out.append(f"{flag}={value}")
    return out + list(settings.extra_args)


class SlurmExecutor:
    name = "slurm"

    def __init__(self, settings: SlurmSettings | None = None) -> None:
        self.settings = settings or SlurmSettings()

    def submit(self, job_id: str, argv: list[str], *, cwd: Path, log_path: Path, res: Resources,
               keep_fds: tuple[int, ...] = ()) -> SlurmJob:
        """Write the batch script beside the job's log and submit it; the handle names the job id.
        ``keep_fds`` cannot follow a job to another node: a job of this attempt already queued or
        running (a supervisor killed between sbatch and journaling it) is adopted instead."""
        queued = _tool(["squeue", "--noheader", "--format=%i", f"--name={job_name(job_id, cwd)}",
                        "--states=PENDING,CONFIGURING,RUNNING,COMPLETING,SUSPENDED"])
        if queued.returncode == 0 and queued.stdout.split():
            return SlurmJob(queued.stdout.split()[0], time.time())
        log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        script = log_path.with_suffix(".sbatch")
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(res.env.items()))
        script.write_text(f"#!/bin/sh\n{exports}exec {shlex.join(argv)}\n")
        cmd = ["sbatch", *sbatch_args(job_id, cwd=cwd, log_path=log_path, res=res, settings=self.settings),
               str(script)]
        done = _tool(cmd)
        if done.returncode != 0:
            raise SlurmError(f"sbatch for {job_id} failed: {done.stderr.strip() or done.stdout.strip()}")
        slurm_id = done.stdout.strip().split(";")[0]  # --parsable: "ID" or "ID;CLUSTER"
        if not slurm_id.isdigit():
            raise SlurmError(f"sbatch for {job_id}: unexpected answer {done.stdout.strip()!r}")
        return SlurmJob(slurm_id, time.time())


@dataclass(frozen=True)
class SlurmJob:
    """One batch job, by its Slurm job id."""

    slurm_id: str
    submitted_at: float
    executor = "slurm"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlurmJob:
        return cls(str(d["slurm_id"]), float(d.get("submitted_at", 0.0)))

    def as_dict(self) -> dict[str, Any]:
        return {"executor": "slurm", "slurm_id": self.slurm_id, "submitted_at": self.submitted_at}

    def query(self) -> tuple[str, str, str]:
        """(state, reason, nodes); state ``GONE`` when Slurm no longer knows the job, ``UNKNOWN``
        when it does not answer (a restarting slurmctld must not read as a dead job)."""
        hit = _cache.get(self.slurm_id)
        now = time.monotonic()
        if hit and now - hit[0] < QUERY_TTL_S:
            return hit[1]
        try:
            got = _squeue(self.slurm_id) or _sacct(self.slurm_id)
        except SlurmError as exc:
            got = ("UNKNOWN", str(exc), "")
        _cache[self.slurm_id] = (now, got)
        return got

    def alive(self) -> bool:
        state = self.query()[0]
        return state in ACTIVE or state == "UNKNOWN"

    def status(self) -> str | None:
        """``PENDING (Resources)``, ``RUNNING on node3``, ``TIMEOUT``...: what squeue says."""
        state, reason, nodes = self.query()
        if state == "PENDING" and reason and reason != "None":
            return f"PENDING ({reason})"
        if state in ("RUNNING", "COMPLETING") and nodes:
            return f"{state} on {nodes}"
        return state

    def end_reason(self) -> str | None:
        """Why a job that wrote no end to its log ended, in Slurm's words (TIMEOUT, OUT_OF_MEMORY...)."""
        state, reason, _ = self.query()
        return None if state in ACTIVE else f"slurm job {self.slurm_id} {state}" + (
            f" ({reason})" if reason and reason != "None" else "")

    def signal_group(self, sig: int) -> bool:
        """Signal every process of the job (SIGTERM: they save and log their end; SIGKILL, the
        supervisor's kill after the grace period: Slurm cancels the job, SIGKILL after its
        KillWait); a job still pending is removed from the queue."""
        state = self.query()[0]
        if state not in ACTIVE:
            return False
        if state == "PENDING":
            argv = ["scancel", self.slurm_id]
        else:
            argv = ["scancel", f"--signal={signal.Signals(sig).name.removeprefix('SIG')}", "--full", self.slurm_id]
        done = _tool(argv)
        _cache.pop(self.slurm_id, None)
        return done.returncode == 0


def _squeue(slurm_id: str) -> tuple[str, str, str] | None:
    done = _tool(["squeue", "--states=all", "--noheader", "--format=%T|%r|%N", "--jobs", slurm_id])
    if done.returncode == 0 and done.stdout.strip():
        state, reason, nodes = (done.stdout.strip().splitlines()[0].split("|") + ["", ""])[:3]
        return state, reason, nodes
    if "Invalid job id" in done.stderr or done.returncode == 0:
        return None  # left the queue: ask accounting
    return ("UNKNOWN", done.stderr.strip()[:200], "")


def _sacct(slurm_id: str) -> tuple[str, str, str] | None:
    done = _tool(["sacct", "--noheader", "--parsable2", "--allocations", "--format=State,Reason,NodeList",
                  "--jobs", slurm_id])
    if done.returncode != 0:
        # no accounting on this cluster: a job squeue no longer lists has ended
        return ("GONE", "not in squeue; no accounting (sacct) to say how it ended", "")
    line = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
    if not line:
        return ("GONE", "unknown to squeue and sacct", "")
    state, reason, nodes = (line.split("|") + ["", ""])[:3]
    return state.split()[0], reason, nodes  # "CANCELLED by 0" -> CANCELLED
