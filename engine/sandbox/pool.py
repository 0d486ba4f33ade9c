"""The pool: warm template processes, job dispatch, wall-clock kills, verdicts.

The manager lives in the caller's process. Each slot is one template started inside
bubblewrap's namespaces (``bwrap.py``: its own root, pid, network, IPC; the work area a
size-limited tmpfs) where that works, else inside a network namespace (``unshare --net``)
with its work area in a host directory. When the pool runs as root, each slot's
children run under their own unprivileged uid. A pool checks itself when it starts (a
known-correct program must pass, a wrong one fail) and refuses to run otherwise, so a
host where programs cannot run never scores them as failures. Nothing a template
sends, and no exception in the dispatch loop, ends a ``run_many`` other than as a verdict.
"""

from __future__ import annotations

import json
import logging
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

from engine.sandbox import bwrap, landlock, seccomp, wire
from engine.sandbox.tree import remove_tree

log = logging.getLogger(__name__)
STATUSES = ("passed", "failed", "error", "syntax_error", "timeout", "oom", "blocked")
GRACE_S = 1.0
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the whole environment a template (and so every program) gets: nothing of the caller's
TEMPLATE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
                # LD_BIND_NOW: symbols resolved once in the template, not again in every forked child
                "LD_BIND_NOW": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SELF_CHECK = ("def add(a, b):\n    return a + b\n", "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n")
_NET_PROBE: dict[bool, list[str] | None] = {}


@dataclass(frozen=True)
class Limits:
    """Per-program limits (kernel-enforced rlimits)."""

    memory_mb: int = 2048
    cpu_s: int = 20
    nproc: int = 1  # under a pool's own uid: the program's process is the only one (no fork, no threads)
    fsize_mb: int = 16
    nofile: int = 64
    disk_mb: int = 64  # all of a program's files together (the tmpfs under bubblewrap)


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
    isolation: list[str] = field(default_factory=list)  # the layers that were active for this check

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def network_prefix() -> list[str] | None:
    """The ``unshare`` command that gives a template (without bubblewrap) a network namespace of
    its own, and a mount namespace where it can put a size-limited tmpfs on its work area; the
    first of those that works here, or None."""
    root = os.geteuid() == 0
    if root not in _NET_PROBE:
        _NET_PROBE[root] = None
        for extra in (["--mount"], []):
            cmd = ["unshare", "--net", *extra] + ([] if root else ["--map-root-user"])
            try:
                if shutil.which("unshare") and subprocess.run([*cmd, "true"], capture_output=True,
                                                              timeout=10).returncode == 0:
                    _NET_PROBE[root] = cmd
                    break
            except (OSError, subprocess.SubprocessError):
                continue
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
        code spinning), the template itself, which ``_pump`` then restarts. Under bubblewrap
        the program's pid is the namespace's: the template goes at once."""
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


def sweep_orphans(tmp: str | None = None) -> list[str]:
    """Remove the work dirs of pools whose process is gone (killed -9, so ``close`` never ran);
    their pid is in the name. A live process with that pid keeps its dir. Returns what went;
    never raises (a tree it cannot remove is logged and left)."""
    gone = []
    root = tmp or tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        return gone
    for name in names:
        parts = name.split("-")
        if not name.startswith("pmat-sandbox-") or len(parts) < 4 or not parts[2].isdigit():
            continue
        try:
            os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            problem = remove_tree(os.path.join(root, name))
            if problem:
                log.warning("sandbox: could not remove an orphaned work dir: %s", problem)
            else:
                gone.append(name)
        except (PermissionError, OverflowError, ValueError):  # alive, someone else's; or not a pid
            pass
    return gone


def _work_area() -> str:
    """A fresh host directory for the children's work dirs (without bubblewrap): in TMPDIR, or
    the first of the usual places where one can be made; orphans of killed pools swept first."""
    for root in dict.fromkeys([tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"]):
        sweep_orphans(root)
        try:
            base = tempfile.mkdtemp(prefix=f"pmat-sandbox-{os.getpid()}-", dir=root)
        except OSError:
            continue
        os.chmod(base, 0o711)
        return base
    raise RuntimeError("sandbox: no directory can be made for programs' work (TMPDIR, /tmp, /var/tmp, /dev/shm)")


class SandboxPool:
    """Run many checks through ``workers`` warm templates; use as a context manager.

    ``outer``: "auto" (bubblewrap when it works here, else a network namespace when that
    works), "bwrap" (required: refuse to start without it) or "none". ``landlock=False``
    leaves Landlock out, as on a kernel without it (to test the layers under it)."""

    def __init__(self, workers: int | None = None, limits: Limits = Limits(), *, isolate_uid: bool = True,
                 network: str = "auto", outer: str = "auto", landlock: bool = True) -> None:
        # two slots per core: a template and its child take turns. More would hide sleeping programs
        # better but starve CPU-bound correct ones into wall-clock timeouts (MBPP 123 at 10 s on 8 slots)
        self.workers = max(1, workers or min(32, 2 * (os.cpu_count() or 1)))
        self.limits = limits
        self.isolate_uid = isolate_uid
        self.landlock = landlock
        # unnamed uids, random per pool: two pools never share one (a slot's cleanup kills its uid's all)
        self.uid_base = 1_000_000 + secrets.randbelow(1 << 24) * 64
        why_not = bwrap.available() if outer in ("auto", "bwrap") and network == "auto" else "not asked for"
        if outer == "bwrap" and why_not:
            raise RuntimeError(f"sandbox: {why_not}")
        self.bwrap = why_not is None
        self.net_prefix = None if self.bwrap or network != "auto" else network_prefix()
        self.network = "namespace" if self.bwrap or self.net_prefix else "in-process"
        self.slots: list[_Slot] = []
        self.base = ""
        try:
            self._start()
        except RuntimeError as exc:
            if not (self.bwrap and outer == "auto"):
                raise
            # bubblewrap probed fine but its templates did not come up (namespace limits...)
            log.warning("sandbox: bubblewrap templates failed (%s); starting without bubblewrap", exc)
            self.bwrap = False
            self.net_prefix = network_prefix() if network == "auto" else None
            self.network = "namespace" if self.net_prefix else "in-process"
            self._start()
        self.layers = self._layers()

    def _start(self) -> None:
        if not self.bwrap:
            self.base = _work_area()
        try:
            self.slots = [_Slot(i, self) for i in range(self.workers)]  # all start at once
            for slot in self.slots:
                slot.wait_ready()
            self._self_check()
        except BaseException:
            self.close()
            raise

    def _self_check(self) -> None:
        """Each slot runs a known-correct and a known-wrong program: a host where programs cannot
        run (a work area its children cannot reach, a missing library) must not score 0% quietly."""
        good, tests = SELF_CHECK
        jobs = [Job(good, tests, timeout=30.0) for _ in self.slots]
        jobs += [Job(good.replace("a + b", "a - b"), tests, timeout=30.0) for _ in self.slots]
        verdicts = self.run_many(jobs)
        wrong = [v for v in verdicts[:len(self.slots)] if not v.passed]
        wrong += [v for v in verdicts[len(self.slots):] if v.status != "failed"]
        if wrong:
            v = wrong[0]
            raise RuntimeError(f"sandbox self-check failed: a known program came back {v.status} "
                               f"({v.error_type}: {v.detail[:300]}); refusing to score programs on this host")

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for slot in self.slots:
            slot.stop()
        self.slots = []
        if self.base:
            problem = remove_tree(self.base)
            if problem:
                log.warning("sandbox: could not remove its work dir: %s", problem)
            self.base = ""

    @property
    def filesystem(self) -> str:
        """What keeps programs' writes inside their directory, besides the audit hook."""
        abi = min(s.landlock for s in self.slots) if self.slots else 0
        layers = [f"landlock ABI {abi}"] if abi else []
        if os.geteuid() == 0 and self.isolate_uid:
            layers.append("own uid")
        if self.bwrap:
            layers.append("bubblewrap mount namespace")
        return " + ".join(layers) or "audit hook only"

    def _layers(self) -> list[str]:
        on = []
        if self.bwrap:
            on += ["bwrap-mount-ns", "bwrap-pid-ns", "net-ns", "ipc-ns", f"tmpfs-quota-{self.limits.disk_mb}mb"]
        elif self.net_prefix:
            on.append("net-ns")
            if self.slots and all(s.tmpfs for s in self.slots):
                on += ["mount-ns-site-packages-masked", f"tmpfs-quota-{self.limits.disk_mb}mb"]
        abi = min((s.landlock for s in self.slots), default=0)
        if abi:
            on.append(f"landlock-abi-{abi}")
        if self.slots and all(s.seccomp for s in self.slots):
            on.append("seccomp")
        if os.geteuid() == 0 and self.isolate_uid:
            on.append("own-uid")
        return [*on, "rlimits", "audit-hook", "scrubbed-env", "tests-outside-program"]

    def isolation(self) -> dict[str, Any]:
        """The isolation layers of this pool's checks, for result records."""
        return {"layers": list(self.layers), "missing": missing_layers(self.layers), "network": self.network,
                "filesystem": self.filesystem, "user": "root" if os.geteuid() == 0 else "unprivileged"}

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

        def finish(slot: _Slot, verdict: Verdict) -> None:
            fd = next((k for k, v in busy.items() if v is slot), None)
            if fd is not None:
                sel.unregister(fd)
                del busy[fd]
            idx = slot.job[0]
            verdict.isolation = list(getattr(self, "layers", []))
            results[idx] = verdict
            slot.job = None
            if slot.proc.poll() is None or slot.restart():
                idle.append(slot)
            else:
                self.slots.remove(slot)
            if on_result:
                on_result(idx, verdict)

        try:
            while pending or busy:
                if not self.slots:
                    raise RuntimeError("sandbox: every template died and none could be restarted")
                while idle and pending:
                    slot = idle.popleft()
                    try:
                        slot.submit(*pending.popleft())
                    except OSError as exc:  # the template went between jobs
                        finish(slot, Verdict("error", "HarnessError", f"sandbox template unavailable: {exc}"))
                        continue
                    busy[slot.proc.stdout.fileno()] = slot
                    sel.register(slot.proc.stdout.fileno(), selectors.EVENT_READ, slot)
                if not busy:
                    continue
                wait = max(0.0, min(s.deadline for s in busy.values()) - time.monotonic())
                for key, _ in sel.select(timeout=wait):
                    slot = key.data
                    try:
                        finished = self._pump(slot)
                    except Exception as exc:  # noqa: BLE001 - whatever went wrong, a verdict and a fresh template
                        log.exception("sandbox: template %d", slot.index)
                        slot.stop()
                        finished = Verdict("error", "HarnessError", f"sandbox template failed: {type(exc).__name__}")
                    if finished is not None:
                        finish(slot, finished)
                now = time.monotonic()
                for slot in list(busy.values()):
                    if now >= slot.deadline:
                        slot.kill_job()
                        slot.deadline = now + 2.0  # the template reports 'done' once the group is dead
        finally:
            sel.close()
        return [r for r in results if r is not None]

    def _pump(self, slot: _Slot) -> Verdict | None:
        """Read what a template wrote; a verdict once its job is done (a dead one is restarted by
        ``finish``)."""
        chunk = os.read(slot.proc.stdout.fileno(), 1 << 20)
        if not chunk:
            slot.stop()
            if slot.killed:
                return Verdict("timeout", detail="wall-clock limit reached; tests and program killed")
            return Verdict("error", "HarnessError", "sandbox template died; restarted")
        slot.buf += chunk
        if len(slot.buf) > wire.MAX_MESSAGE:
            raise wire.ProtocolError("template line too long")
        while b"\n" in slot.buf:
            line, slot.buf = slot.buf.split(b"\n", 1)
            msg = json.loads(line)
            if msg.get("type") == "started":
                slot.pids = {"child": int(msg["child"])}
                slot.deadline = time.monotonic() + slot.job[1].timeout + GRACE_S
            elif msg.get("type") == "done":
                return verdict_from(msg, slot.job[2], slot.killed)
        return None


def isolation_layers() -> dict[str, Any]:
    """The layers a pool started now on this host would have, without starting one."""
    root = os.geteuid() == 0
    on = []
    why_not = bwrap.available()
    if why_not is None:
        on += ["bwrap-mount-ns", "bwrap-pid-ns", "net-ns", "ipc-ns", f"tmpfs-quota-{Limits().disk_mb}mb"]
    elif network_prefix():
        on.append("net-ns")
        if "--mount" in (network_prefix() or []):
            on += ["mount-ns-site-packages-masked", f"tmpfs-quota-{Limits().disk_mb}mb"]
    if landlock.abi():
        on.append(f"landlock-abi-{landlock.abi()}")
    if seccomp.supported():
        on.append("seccomp")
    if root:
        on.append("own-uid")
    on += ["rlimits", "audit-hook", "scrubbed-env", "tests-outside-program"]
    return {"layers": on, "missing": missing_layers(on), "bwrap": why_not or "ok",
            "user": "root" if root else "unprivileged", "kernel": kernel_isolated(on)}


def kernel_isolated(layers: list[str]) -> bool:
    """Whether any layer the kernel enforces is there (without one, only the audit hook stands
    between a program and the host: ``pmat check`` refuses)."""
    return any(layer.startswith(("bwrap", "net-ns", "landlock", "seccomp")) for layer in layers)


def missing_layers(layers: list[str]) -> list[str]:
    """What a fully isolated pool has that ``layers`` lacks, each with why it matters."""
    want = {"bwrap-mount-ns": "bubblewrap (programs could read host files: apt-get install bubblewrap)",
            "landlock": "Landlock (kernel >= 5.13: writes outside the work dir stopped by the audit hook alone)",
            "seccomp": "seccomp (x86-64/aarch64 only: processes, sockets and memfd stopped by the audit hook alone)",
            "net-ns": "a network namespace (sockets stopped by the audit hook and seccomp alone)",
            "tmpfs-quota": "a mount namespace (no total disk quota per program, RLIMIT_FSIZE per file only)"}
    return [why for key, why in want.items() if not any(layer.startswith(key) for layer in layers)]


def check_line() -> str | None:
    """One line for ``pmat check`` when a sandbox layer is missing on this host; None when all are there."""
    host = isolation_layers()
    if not host["missing"]:
        return None
    lead = "sandbox: missing isolation layers" if host["kernel"] else "sandbox: NO kernel isolation (audit hook only)"
    return f"{lead}: {'; '.join(host['missing'])}"
