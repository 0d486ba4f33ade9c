"""Multi-process training: a trainer job whose spec entry says ``gpus: N`` (N > 1) runs as N DDP
ranks under ``torchrun``; every other job runs as one ``engine.sdk.run`` process, as before.

``python -m engine.sdk.launch --ranks N JOBFILE`` is the job's process-group leader: it starts ``torchrun
--standalone --nproc-per-node N -m engine.sdk.launch --worker JOBFILE`` and decides the outcome.
Rank 0 runs the stage through ``run_job`` and writes the job's log (progress, metrics,
checkpoints, the published adapter, the ledger record); ranks > 0 run the same stage with their
own work dir, write ``logs/ranks/<job>.rank<r>.jsonl`` and publish nothing. A lost rank (killed,
crashed, OOM) makes torchrun stop the others; ranks stop at once on SIGTERM (a collective
with a dead peer cannot finish a clean save), and the leader ends the job's log with
``job_finished failed`` naming the rank, so the job fails cleanly and the next attempt resumes
from the last complete checkpoint. A cancel (SIGTERM to the group) ends it ``cancelled``.

The global batch is the spec's ``batch_size x grad_accum`` whatever N is: each rank
accumulates ``grad_accum / N`` micro-batches (``rank_accum``), so ``gpus: 1`` and ``gpus: N``
train the same model from the same data order. CUDA ranks use NCCL on ``cuda:LOCAL_RANK``,
CPU ranks (``device: cpu``, the tests) gloo.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.events import EventWriter, read_events
from engine.kinds import load_stage
from engine.sdk.base import JobSpec, StageContext
from engine.spec import ranks
from engine.workspace import Workspace


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_accum(grad_accum: int) -> int:
    """Micro-batches each rank accumulates so that the global batch stays batch_size x grad_accum."""
    n = world_size()
    if grad_accum % n:
        raise ValueError(f"params.grad_accum {grad_accum} is not divisible by the {n} ranks: the global batch "
                         "(batch_size x grad_accum) is split over them")
    return grad_accum // n


def job_argv(job_file: Path, kind: str, gpus: int) -> list[str]:
    """The command that runs a job: the leader for a multi-rank trainer, else the plain runner."""
    n = ranks(kind, gpus)
    if n == 1:
        return [sys.executable, "-m", "engine.sdk.run", str(job_file)]
    return [sys.executable, "-m", "engine.sdk.launch", "--ranks", str(n), str(job_file)]


def rank_log(ws: Workspace, job_id: str, rank: int) -> Path:
    """Rank 0 writes the job's log; the others their own."""
    return ws.job_log(job_id) if rank == 0 else ws.logs_dir / "ranks" / f"{job_id}.rank{rank}.jsonl"


# -- the leader -------------------------------------------------------------------------
def lost_ranks(ws: Workspace, job: JobSpec, n: int) -> list[int]:
    """Ranks that died without a word: no end and no stop (a rank torchrun stopped says so) in
    their log (rank 0's is the job log, the others' are under logs/ranks)."""
    ends = ("job_finished", "rank_finished", "rank_stopped")
    return [r for r in range(n) if not any(e.get("kind") in ends for e in read_events(rank_log(ws, job.job_id, r)))]


def lead(job_file: Path, n: int) -> int:
    """Run the job as ``n`` torchrun ranks, then make sure the job's log ends with its outcome."""
    job = JobSpec.load(job_file)
    ws = Workspace(Path(job.workspace))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
            "--max-restarts=0", "-m", "engine.sdk.launch", "--worker", str(job_file)]
    proc = subprocess.Popen(argv)
    cancelled = []

    def on_signal(sig: int, _frame: Any) -> None:
        cancelled.append(sig)
        proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    code = proc.wait()
    logged = [e for e in read_events(ws.job_log(job.job_id)) if e.get("kind") == "job_finished"]
    if logged:
        return {"ok": 0, "cancelled": 3}.get(logged[-1]["outcome"], 1) if code == 0 else max(code, 1)
    lost = lost_ranks(ws, job, n)
    with EventWriter(ws.job_log(job.job_id)) as events:
        if cancelled:
            events.emit("job_finished", outcome="cancelled", error=f"{job.stage} cancelled (all {n} ranks stopped)")
            return 3
        events.emit("job_finished", outcome="failed",
                    error=f"rank {', '.join(map(str, lost)) or '?'} of {n} lost (torchrun exit {code}); "
                          "the other ranks were stopped")
    return 1


# -- a rank ---------------------------------------------------------------------------------
class RankContext(StageContext):
    """A rank > 0: the same stage on its own work dir; it reports to its rank log, publishes and
    records nothing (rank 0 does), and resumes from rank 0's checkpoints (the job log's events)."""

    def __init__(self, job: JobSpec, events: EventWriter, ws: Workspace, rank: int) -> None:
        super().__init__(job, events, ws)
        self.work_dir = ws.work_dir(job.stage) / f"rank{rank}"
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def publish(self, name: str, src: Path, **meta: Any) -> Path:
        return Path(src)

    def record_result(self, record: dict[str, Any]) -> None:
        return None


def work(job_file: Path) -> int:
    """One torchrun worker: rank 0 runs the job as usual, the others as RankContext."""
    import torch

    from engine.sdk.run import run_job

    job = JobSpec.load(job_file)
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    ws = Workspace(Path(job.workspace))

    def stop(sig: int, _frame: Any) -> None:  # a peer is lost or the job is cancelled: say so, stop now
        try:
            with EventWriter(rank_log(ws, job.job_id, rank)) as events:
                events.emit("rank_stopped", rank=rank, signal=signal.Signals(sig).name)
        finally:
            os._exit(128 + sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if job.device.startswith("cuda") or (job.device == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local)
        job.device = f"cuda:{local}"
    if rank == 0:
        return {"ok": 0, "cancelled": 3}.get(run_job(job, install_signals=False), 1)
    with EventWriter(rank_log(ws, job.job_id, rank)) as events:
        events.emit("rank_started", rank=rank, pid=os.getpid(), attempt=job.attempt)
        try:
            module = load_stage(job.kind)
            module.run(RankContext(job, events, ws, rank), module.Params(**job.params))
        except BaseException as exc:  # noqa: BLE001 - the rank's end goes to its log
            events.emit("rank_finished", outcome="failed", error=f"{type(exc).__name__}: {exc}")
            return 1
        events.emit("rank_finished", outcome="ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"] and len(argv) == 2:
        return work(Path(argv[1]))
    if len(argv) != 3 or argv[0] != "--ranks" or not argv[1].isdigit() or int(argv[1]) < 1:
        print("usage: python -m engine.sdk.launch --ranks N JOBFILE.json", file=sys.stderr)
        return 2
    return lead(Path(argv[2]), int(argv[1]))


if __name__ == "__main__":
    sys.exit(main())
