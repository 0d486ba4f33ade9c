"""The pool: warm template processes, job dispatch, wall-clock kills, verdicts.

The manager lives in the caller's process. Each slot is one template started inside
a new network namespace (``unshare --net``; with ``--map-root-user`` when not root)
where that works, else the child's audit hook alone blocks sockets. When the pool
runs as root, each slot's children run under their own unprivileged uid.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("passed", "failed", "error", "syntax_error", "timeout", "oom", "blocked")
GRACE_S = 1.0
_NET_PROBE: dict[bool, list[str] | None] = {}


@dataclass(frozen=True)
class Limits:
    """Per-program limits (kernel-enforced rlimits)."""

    memory_mb: int = 2048
    cpu_s: int = 20
    nproc: int = 1  # under a pool's own uid: the program's process is the only one (no fork, no threads)
    fsize_mb: int = 16
    nofile: int = 64


@dataclass
class Job:
    """One check: ``program`` runs confined; ``runner_code`` (trusted tests) runs outside it.

    ``setup`` runs in the child after the program (MBPP's test_setup_code). ``aliases``
    binds a test-side name to a program global (``{"candidate": "add"}``).
    """

    program: str
    runner_code: str
    setup: str = ""
    aliases: dict[str, str] = field(default_factory=dict)
    timeout: float = 10.0


@dataclass
class Verdict:
    status: str
    error_type: str | None = None
    detail: str = ""
    blocked_op: str | None = None
    wall_s: float = 0.0
    stdout_tail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def network_prefix() -> list[str] | None:
    """The ``unshare`` command that gives a template a network namespace of its own, if any."""
    root = os.geteuid() == 0
    if root not in _NET_PROBE:
        cmd = ["unshare", "--net"] + ([] if root else ["--map-root-user"])
        try:
            ok = shutil.which("unshare") and subprocess.run(
                [*cmd, "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        _NET_PROBE[root] = cmd if ok else None
    return _NET_PROBE[root]


class _Slot:
    def __init__(self, index: int, pool: SandboxPool) -> None:
        self.index = index
        self.pool = pool
        self.buf = b""
        self.job: tuple[int, Job, str] | None = None
        self.pids: dict[str, int] = {}
        self.deadline = 0.0
        self.killed = False
        self.start()

    def start(self) -> None:
        uid = self.pool.uid_base + self.index if os.geteuid() == 0 and self.pool.isolate_uid else None
        if self.pool.net_prefix and os.geteuid() != 0:
            uid = None  # inside a user namespace the template is "root" without real uids to switch to
        cfg = {"base": self.pool.base, "uid": uid, "limits": asdict(self.pool.limits)}
        # LD_BIND_NOW: symbols resolved once in the template, not again in every forked child
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0", LD_BIND_NOW="1",
                   OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [*(self.pool.net_prefix or []), sys.executable, "-m", "engine.sandbox.template", json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True, env=env,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        self.buf = b""

    def wait_ready(self) -> None:
        ready = self.read_line(timeout=60)
        if not ready or ready.get("type") != "ready":
            raise RuntimeError(f"sandbox template {self.index} failed to start: {ready}")
        self.landlock = int(ready.get("landlock") or 0)

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
        return json.loads(line)

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
        code spinning), the template itself, which ``_pump`` then restarts."""
        targets = [self.proc.pid] if self.killed else list(self.pids.values())
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
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


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


def sweep_orphans(tmp: str | None = None) -> list[str]:
    """Remove the work dirs of pools whose process is gone (killed -9, so ``close`` never ran);
    their pid is in the name. A live process with that pid keeps its dir. Returns what went."""
    gone = []
    root = tmp or tempfile.gettempdir()
    for name in os.listdir(root):
        parts = name.split("-")
        if not name.startswith("pmat-sandbox-") or len(parts) < 4 or not parts[2].isdigit():
            continue
        try:
            os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            gone.append(name)
        except PermissionError:  # alive, someone else's
            pass
    return gone


class SandboxPool:
    """Run many checks through ``workers`` warm templates; use as a context manager."""

    def __init__(self, workers: int | None = None, limits: Limits = Limits(), *, isolate_uid: bool = True,
                 network: str = "auto") -> None:
        # two slots per core: a template and its child take turns. More would hide sleeping programs
        # better but starve CPU-bound correct ones into wall-clock timeouts (MBPP 123 at 10 s on 8 slots)
        self.workers = max(1, workers or min(32, 2 * (os.cpu_count() or 1)))
        self.limits = limits
        self.isolate_uid = isolate_uid
        # unnamed uids, random per pool: two pools never share one (a slot's cleanup kills its uid's all)
        self.uid_base = 1_000_000 + secrets.randbelow(1 << 24) * 64
        self.net_prefix = network_prefix() if network == "auto" else None
        self.network = "namespace" if self.net_prefix else "in-process"
        sweep_orphans()
        self.base = tempfile.mkdtemp(prefix=f"pmat-sandbox-{os.getpid()}-")
        os.chmod(self.base, 0o711)
        self.slots: list[_Slot] = []
        try:
            self.slots = [_Slot(i, self) for i in range(self.workers)]  # all start at once
            for slot in self.slots:
                slot.wait_ready()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for slot in self.slots:
            slot.stop()
        self.slots = []
        shutil.rmtree(self.base, ignore_errors=True)

    @property
    def filesystem(self) -> str:
        """What keeps programs' writes inside their directory, besides the audit hook."""
        abi = min(s.landlock for s in self.slots) if self.slots else 0
        layers = [f"landlock ABI {abi}"] if abi else []
        if os.geteuid() == 0 and self.isolate_uid:
            layers.append("own uid")
        return " + ".join(layers) or "audit hook only"

    def healthy(self) -> bool:
        return all(s.proc.poll() is None for s in self.slots) and bool(self.slots)

    def run(self, job: Job) -> Verdict:
        return self.run_many([job])[0]

    def run_many(self, jobs: list[Job], on_result: Callable[[int, Verdict], None] | None = None) -> list[Verdict]:
        """Run every job; verdicts in job order. ``on_result(i, verdict)`` as each finishes."""
        results: list[Verdict | None] = [None] * len(jobs)
        pending = deque(enumerate(jobs))
        idle = deque(self.slots)
        busy: dict[int, _Slot] = {}
        sel = selectors.DefaultSelector()
        try:
            while pending or busy:
                while idle and pending:
                    slot = idle.popleft()
                    slot.submit(*pending.popleft())
                    busy[slot.proc.stdout.fileno()] = slot
                    sel.register(slot.proc.stdout.fileno(), selectors.EVENT_READ, slot)
                wait = max(0.0, min(s.deadline for s in busy.values()) - time.monotonic())
                for key, _ in sel.select(timeout=wait):
                    slot = key.data
                    finished = self._pump(slot)
                    if finished is not None:
                        sel.unregister(key.fd)
                        del busy[key.fd]
                        idx = slot.job[0]
                        results[idx] = finished
                        slot.job = None
                        idle.append(slot)
                        if on_result:
                            on_result(idx, finished)
                now = time.monotonic()
                for slot in busy.values():
                    if now >= slot.deadline:
                        slot.kill_job()
                        slot.deadline = now + 2.0  # the template reports 'done' once the group is dead
        finally:
            sel.close()
        return [r for r in results if r is not None]

    def _pump(self, slot: _Slot) -> Verdict | None:
        """Read what a template wrote; a verdict once its job is done (restarting a dead template)."""
        chunk = os.read(slot.proc.stdout.fileno(), 1 << 20)
        if not chunk:
            slot.proc.wait()
            slot.proc.stdin.close()
            slot.proc.stdout.close()
            slot.start()
            slot.wait_ready()
            if slot.killed:
                return Verdict("timeout", detail="wall-clock limit reached; tests and program killed")
            return Verdict("error", "HarnessError", "sandbox template died; restarted")
        slot.buf += chunk
        while b"\n" in slot.buf:
            line, slot.buf = slot.buf.split(b"\n", 1)
            msg = json.loads(line)
            if msg.get("type") == "started":
                slot.pids = {"child": int(msg["child"])}
                slot.deadline = time.monotonic() + slot.job[1].timeout + GRACE_S
            elif msg.get("type") == "done":
                return verdict_from(msg, slot.job[2], slot.killed)
        return None
