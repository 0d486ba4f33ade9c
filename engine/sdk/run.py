"""Run one job: ``python -m engine.sdk.run WORKSPACE/jobs/<job_id>.json``.

Writes ``job_started`` (identity, argv, params and their hash), runs the stage,
samples resource use in the background, and always ends the log with
``job_finished`` (ok | failed | cancelled) unless the process is killed outright,
which the supervisor then reports as crashed. The stage's result records are
committed to the ledger just before ``job_finished``, which lists their digests:
that line is the job's commit point.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from engine.chain import append_chained, verify_chain
from engine.events import EventWriter
from engine.kinds import load_stage
from engine.procs import ProcIdentity
from engine.results import commit_results
from engine.sdk.base import Cancelled, JobSpec, StageContext, StageFailed
from engine.workspace import Workspace

RESOURCE_INTERVAL_S = 2.0


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process from /proc (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _gpu_bytes() -> int | None:
    """Peak CUDA bytes, asked only of a torch whose CUDA is up; never imports torch (a torch
    another thread is still importing has no ``cuda`` yet and is not asked)."""
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    if cuda is None or not getattr(cuda, "is_initialized", lambda: False)():
        return None
    return int(cuda.max_memory_allocated())


class _ResourceSampler(threading.Thread):
    def __init__(self, events: EventWriter) -> None:
        super().__init__(daemon=True)
        self.events = events
        self.peak_rss = 0
        self.stop = threading.Event()

    def sample(self) -> None:
        rss = rss_bytes()
        self.peak_rss = max(self.peak_rss, rss)
        self.events.emit("resource", rss=rss, peak_rss=self.peak_rss, gpu=_gpu_bytes())

    def run(self) -> None:
        """Sample until stopped; a failing sample is logged once and sampling goes on."""
        failed = False
        while not self.stop.wait(RESOURCE_INTERVAL_S):
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - the sampler must outlive any probe
                if not failed:
                    failed = True
                    with contextlib.suppress(OSError):
                        self.events.emit("warning", message=f"resource sampler: {type(exc).__name__}: {exc}")


def fault_point(name: str) -> None:
    """Test hook: ``PMAT_FAULT_AT=<name>`` kills this process outright at that instant."""
    if os.environ.get("PMAT_FAULT_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _announce(ws: Workspace, job: JobSpec, entries: list[dict[str, str]]) -> None:
    """Durably name the ledger lines this job is about to write, before writing them."""
    fault_point("results_announcing")
    with EventWriter(ws.job_log(job.job_id), fsync=True) as writer:
        writer.emit("result", results=entries)
    fault_point("results_announced")


def run_job(job: JobSpec, *, install_signals: bool = True) -> str:
    """Run a job in this process; returns the outcome written to the log."""
    ws = Workspace(Path(job.workspace))
    events = EventWriter(ws.job_log(job.job_id))
    ctx = StageContext(job, events, ws)
    if install_signals:
        signal.signal(signal.SIGTERM, lambda *_: ctx.cancel())
        signal.signal(signal.SIGINT, lambda *_: ctx.cancel())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    ident = ProcIdentity.of(os.getpid())
    events.emit(
        "job_started",
        job_id=job.job_id,
        stage=job.stage,
        stage_kind=job.kind,
        attempt=job.attempt,
        argv=sys.argv,
        params=job.params,
        params_hash=job.params_hash,
        inputs=job.inputs,
        **ident.as_dict(),
    )
    sampler = _ResourceSampler(events)
    sampler.start()
    outcome, error, commit = "ok", None, True
    try:
        module = load_stage(job.kind)
        params = module.Params(**job.params)
        module.run(ctx, params)
        missing = [o for o in job.outputs if not ws.verify(job.stage, o)]
        if missing:
            outcome, error = "failed", f"stage did not publish declared outputs: {', '.join(missing)}"
    except Cancelled as exc:
        outcome, error, commit = "cancelled", str(exc), False
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the log
        outcome = "failed"
        error = f"{type(exc).__name__}: {exc}"
        commit = isinstance(exc, StageFailed)  # a measured verdict keeps its record; a crash does not
        events.emit("warning", message="traceback", traceback=traceback.format_exc()[-4000:])
    finally:
        sampler.stop.set()
        sampler.sample()
        results: list[dict[str, str]] = []
        if commit and ctx.pending_results:
            try:
                results = commit_results(ws, job.job_id, job.stage, ctx.pending_results, lambda entries: _announce(ws, job, entries))
            except Exception as exc:  # noqa: BLE001 - the job fails, naming the ledger
                outcome, error = "failed", f"results ledger {ws.ledger_path}: {type(exc).__name__}: {exc}"
            fault_point("results_committed")
            if not (chain := verify_chain(ws.ledger_path)).ok:
                events.emit("warning", message=f"{chain.reason}: this job's results do not count until "
                                               "`pmat verify --accept`")
        events.emit("job_finished", outcome=outcome, error=error, peak_rss=sampler.peak_rss,
                    peak_gpu=_gpu_bytes(), results=results)
        events.close()
    return outcome


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m engine.sdk.run JOBFILE.json", file=sys.stderr)
        return 2
    job = JobSpec.load(Path(argv[0]))
    outcome = run_job(job)
    return {"ok": 0, "cancelled": 3}.get(outcome, 1)



def run_inline(
    workspace: Workspace,
    stage: str,
    kind: str,
    params: dict[str, Any],
    inputs: dict[str, Path | str] | None = None,
    *,
    attempt: int = 1,
    outputs: list[str] | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> str:
    """Run a stage in this process (tests, notebooks); returns the outcome.

    The job is journaled as launched (``inline``) so that its results have provenance.
    """
    workspace.init()
    job = JobSpec(
        job_id=f"{stage}.{attempt}",
        stage=stage,
        kind=kind,
        attempt=attempt,
        workspace=str(workspace.root),
        params=params,
        inputs={k: str(v) for k, v in (inputs or {}).items()},
        params_hash=params_hash(params),
        outputs=list(outputs or []),
        device=device,
        seed=seed,
    )
    job.save(workspace.job_file(job.job_id))
    append_chained(workspace.journal_path, [{"ts": time.time(), "kind": "launched", "stage": stage, "job_id": job.job_id,
                                             "attempt": attempt, "identity": None, "inline": True}])
    return run_job(job, install_signals=False)


if __name__ == "__main__":
    sys.exit(main())
