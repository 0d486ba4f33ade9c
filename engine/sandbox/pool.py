"""The pool: warm template processes, job dispatch, wall-clock kills, verdicts.

The manager lives in the caller's process and runs each check through one of its slots
(``slot.py``: a template inside bubblewrap's namespaces, or a network namespace, where the host
has them). A pool checks itself when it starts (a known-correct program must pass, a wrong one
fail) and refuses to run otherwise, so a host where programs cannot run never scores them as
failures. Nothing a template sends, and no exception in the dispatch loop, ends a ``run_many``
other than as a verdict. What a check asks and answers is in ``jobs.py``; which isolation
layers the host gives, in ``isolation.py``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import selectors
import tempfile
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from engine.sandbox import bwrap, wire
from engine.sandbox.isolation import missing_layers, network_prefix
from engine.sandbox.jobs import Job, Limits, Verdict
from engine.sandbox.slot import GRACE_S, Slot, verdict_from
from engine.sandbox.tree import remove_tree

log = logging.getLogger(__name__)
SELF_CHECK = ("def add(a, b):\n    return a + b\n", "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n")


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

    def __init__(self, workers: int | None = None, limits: Limits = Limits(), *, isolate_uid: bool = True,  # noqa: B008 - a frozen dataclass
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
        self.slots: list[Slot] = []
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
            self.slots = [Slot(i, self) for i in range(self.workers)]  # all start at once
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
        busy: dict[int, Slot] = {}
        sel = selectors.DefaultSelector()

        def finish(slot: Slot, verdict: Verdict) -> None:
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

    def _pump(self, slot: Slot) -> Verdict | None:
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
