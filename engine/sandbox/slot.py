"""One slot of a pool: its warm template process and the lines it exchanges with it.

Each slot is one template started inside bubblewrap's namespaces (``bwrap.py``: its own root,
pid, network, IPC; the work area a size-limited tmpfs) where that works, else inside a network
namespace (``unshare --net``) with its work area in a host directory. When the pool runs as
root, each slot's children run under their own unprivileged uid. A slot starts, feeds, kills
and restarts its template; ``verdict_from`` turns the template's nonce-bearing 'done' line into
a verdict. Apart from the pool (``pool.py``) so that one reads as dispatch alone.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any, Protocol

from engine.sandbox import bwrap
from engine.sandbox.jobs import STATUSES, Job, Limits, Verdict

log = logging.getLogger(__name__)
GRACE_S = 1.0
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the whole environment a template (and so every program) gets: nothing of the caller's
TEMPLATE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
                # LD_BIND_NOW: symbols resolved once in the template, not again in every forked child
                "LD_BIND_NOW": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class PoolSettings(Protocol):
    """What a slot reads from the pool that owns it (``pool.SandboxPool``)."""

    limits: Limits
    landlock: bool
    isolate_uid: bool
    uid_base: int
    bwrap: bool
    net_prefix: list[str] | None
    base: str


class Slot:
    """One warm template and the job it is running, if any."""

    def __init__(self, index: int, pool: PoolSettings) -> None:
        self.index = index
        self.pool = pool
        self.buf = b""
        self.job: tuple[int, Job, str] | None = None
        self.pids: dict[str, int] = {}
        self.deadline = 0.0
        self.killed = False
        self.start()

    def start(self) -> None:
        pool = self.pool
        uid = pool.uid_base + self.index if os.geteuid() == 0 and pool.isolate_uid else None
        if pool.net_prefix and os.geteuid() != 0:
            uid = None  # inside a user namespace the template is "root" without real uids to switch to
        cfg = {"base": bwrap.BASE if pool.bwrap else pool.base, "uid": uid,
               "limits": {**asdict(pool.limits), "landlock": pool.landlock},
               "mount_tmpfs": not pool.bwrap and "--mount" in (pool.net_prefix or [])}
        argv = [sys.executable, "-m", "engine.sandbox.template", json.dumps(cfg)]
        prefix = bwrap.command(pool.limits.disk_mb, TEMPLATE_ENV) if pool.bwrap else (pool.net_prefix or [])
        # what a template says before it is ready (it silences itself then): why it did not start
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 - read and closed by wait_ready
        self.proc = subprocess.Popen(
            [*prefix, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors,
            start_new_session=True, env={**TEMPLATE_ENV, "PYTHONPATH": REPO}, cwd=REPO)
        self.buf = b""

    def wait_ready(self) -> None:
        ready = self.read_line(timeout=60)
        if not ready or ready.get("type") != "ready":
            self.stop()
            self.errors.seek(0)
            said = self.errors.read().decode(errors="replace").strip().splitlines()[-3:]
            self.errors.close()
            raise RuntimeError(f"sandbox template {self.index} failed to start: {ready or ' | '.join(said)}")
        self.errors.close()
        self.landlock = int(ready.get("landlock") or 0)
        self.seccomp = bool(ready.get("seccomp"))
        self.tmpfs = bool(ready.get("tmpfs"))

    def restart(self) -> bool:
        """A fresh template after this one died or was killed; False if it would not start."""
        self.stop()
        try:
            self.start()
            self.wait_ready()
            return True
        except (OSError, RuntimeError, ValueError) as exc:
            log.error("sandbox template %d could not be restarted: %s", self.index, exc)
            return False

    def read_line(self, timeout: float) -> dict[str, Any] | None:
        end = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            if not select.select([fd], [], [], max(0.0, end - time.monotonic()))[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            return None
        return msg if isinstance(msg, dict) else None

    def submit(self, idx: int, job: Job) -> None:
        nonce = secrets.token_hex(16)
        self.job, self.pids, self.killed = (idx, job, nonce), {}, False
        self.deadline = time.monotonic() + job.timeout + GRACE_S + 5.0  # until 'started' arrives
        msg = {"nonce": nonce, "program": job.program, "setup": job.setup, "runner_code": job.runner_code,
               "aliases": job.aliases, "timeout": job.timeout}
        data = (json.dumps(msg) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self.proc.stdin.fileno(), view):]

    def kill_job(self) -> None:
        """First the program's group; if the template still has not answered (its trusted test
        code spinning), the template itself, which the pool's ``_pump`` then restarts. Under
        bubblewrap the program's pid is the namespace's: the template goes at once."""
        targets = [self.proc.pid] if self.killed or self.pool.bwrap else list(self.pids.values())
        self.killed = True
        for pid in targets:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def verdict_from(done: dict[str, Any] | None, nonce: str, killed: bool) -> Verdict:
    """Turn the template's 'done' line into a verdict; only the runner's nonce-bearing line counts."""
    if killed:
        return Verdict("timeout", detail="wall-clock limit reached; process group killed")
    result = (done or {}).get("result")
    if not isinstance(result, dict) or not secrets.compare_digest(str(result.get("nonce", "")), nonce):
        return Verdict("error", "HarnessError", f"no valid verdict from the test runner: {done}")
    v = Verdict(**{k: result.get(k) for k in ("status", "error_type", "detail", "blocked_op")},
                wall_s=float(result.get("wall_s") or 0), stdout_tail=str(result.get("stdout_tail") or ""))
    status = (done or {}).get("child_status")
    if v.error_type == "EarlyExit" and isinstance(status, int) and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.valid_signals() else f"signal {sig}"
        if sig == signal.SIGXCPU:
            v.status, v.detail = "timeout", f"killed by {name} (CPU limit)"
        else:
            v.detail = f"killed by {name}"
    elif v.error_type == "EarlyExit" and isinstance(status, int) and os.WIFEXITED(status):
        v.detail = f"program exited with code {os.WEXITSTATUS(status)} before its tests finished"
    if v.status not in STATUSES:
        return Verdict("error", "HarnessError", f"unknown status {v.status!r}")
    return v
