"""The untrusted side: confine this forked process, then run the program and serve calls.

Confinement, in order, before any program byte is read: own session and process
group, every inherited descriptor closed except the call socket and the violation
pipe, a fresh temporary cwd, rlimits (address space, CPU, processes, file size, open
files, no core), an unprivileged uid when started as root, no-new-privs, Landlock
where the kernel has it, a parent-death signal, then an audit hook that ends the process on a forbidden
operation (named on the violation pipe). The verdict is not decided here: the trusted
runner (another process) runs the asserts on plain values sent back over the socket.
"""

from __future__ import annotations

import builtins
import ctypes
import os
import resource
import signal
import socket
import sys
import traceback
from typing import Any

from engine.sandbox import hook, landlock, seccomp, wire

BLOCKED_EXIT = 86
MAX_FD = 1 << 30  # above any RLIMIT_NOFILE


_PREPARED: dict[str, Any] = {}
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded in the template; the program never gets ctypes


def _prctl(option: int, arg: int) -> None:
    _LIBC.prctl(option, arg, 0, 0, 0)


def _count_tasks(uid: int) -> int:
    """Tasks (processes and threads) owned by ``uid``: RLIMIT_NPROC counts them all."""
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return n


def confine(keep: list[int], workdir: str, limits: dict[str, int], uid: int | None) -> str:
    """Apply every process-level measure; after this the process holds only ``keep`` fds.
    Returns the work directory's real path (the cwd, which it stays)."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    out = os.open(os.path.join(workdir, ".output"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    lo = 3
    for fd in sorted(keep):  # every other descriptor: os.closerange is one close_range(2) call
        os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, MAX_FD)
    os.umask(0o077)
    if uid is not None:
        os.chown(os.path.join(workdir, ".output"), uid, uid)
    os.chdir(workdir)
    root = os.getcwd()
    # held from here: after the uid switch the path may not be reachable (a 0700 TMPDIR above it)
    here = os.open(".", os.O_PATH | os.O_CLOEXEC)
    mb = 1 << 20
    cpu = limits["cpu_s"]
    forks_refused = seccomp.supported() and limits["nproc"] <= 1
    rlimits = [(resource.RLIMIT_AS, limits["memory_mb"] * mb), (resource.RLIMIT_CPU, (cpu, cpu + 1)),
               (resource.RLIMIT_FSIZE, limits["fsize_mb"] * mb), (resource.RLIMIT_NOFILE, limits["nofile"]),
               (resource.RLIMIT_CORE, 0)]
    if uid is not None or not forks_refused:  # without its own uid the count is the user's: leave room
        rlimits.append((resource.RLIMIT_NPROC, limits["nproc"] + (0 if uid is not None else _count_tasks(os.getuid()))))
    for res, value in rlimits:
        soft, hard = value if isinstance(value, tuple) else (value, value)
        resource.setrlimit(res, (soft, hard))
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _prctl(38, 1)  # PR_SET_NO_NEW_PRIVS: setuid binaries gain nothing (and Landlock, seccomp may apply)
    # kernel: writes only beneath workdir, no exec, no signals out (if present, and not switched off)
    _PREPARED["landlocked"] = landlock.restrict(here) if limits.get("landlock", True) else 0
    os.close(here)
    seccomp.install(_LIBC, os.getpid(), _PREPARED.get(f"seccomp-{forks_refused}"), allow_processes=not forks_refused)
    _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the zygote (after setuid, which clears it)
    if not _PREPARED.get("environ"):
        _scrub_environ()
    sys.stdout = _PREPARED.get("stdout") or open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = sys.stdout  # print goes to .output, by line
    return root


def prepare() -> None:
    """Build, once in the zygote, what every child would otherwise build for itself: each
    object a child creates or first touches costs it page faults (~3 us each)."""
    landlock.abi()
    _PREPARED["stdout"] = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - fd 1 is .output in a child
    _PREPARED["modules"] = len(sys.modules)
    _PREPARED["blocked"] = hook.blocked_loaded()
    _PREPARED["reads"] = hook.read_roots()
    for refused in (True, False):
        _PREPARED[f"seccomp-{refused}"] = seccomp.build(allow_processes=not refused)
    _PREPARED["environ"] = _scrub_environ()


def _scrub_environ() -> bool:
    """Nothing of the harness's environment; temporary files and home in the cwd (the work dir:
    relative, so one environment serves every child)."""
    os.environ.clear()
    os.environ.update(TMPDIR=".", HOME=".", LANG="C.UTF-8")
    if "tempfile" in sys.modules:
        sys.modules["tempfile"].tempdir = None
    return True


def _blocked_loaded() -> list[str]:
    """Loaded modules that the hook's import check could not see again (cached ones never
    raise the ``import`` event). The zygote's list, unless a module was imported since."""
    if _PREPARED.get("modules") == len(sys.modules):
        return _PREPARED["blocked"]
    return hook.blocked_loaded()


class _Server:
    """Runs the program and answers the runner's calls with plain values."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ns: dict[str, Any] = {"__name__": "__sandbox__", "__builtins__": builtins}
        self.handles: list[Any] = []

    def make_ref(self, obj: Any) -> int:
        self.handles.append(obj)
        return len(self.handles) - 1

    def _named(self, enc: dict[str, Any]) -> Any:
        if "g" in enc:
            return self.ns[str(enc["g"])]
        if "bi" in enc:
            return getattr(builtins, str(enc["bi"]))
        raise wire.ProtocolError(f"unknown value {str(enc)[:80]}")

    def resolve(self, enc: Any) -> Any:
        return wire.decode(enc, lambda h, *_: self.handles[h], extra=self._named)

    def enc(self, value: Any) -> Any:
        return wire.encode(value, self.make_ref)

    @staticmethod
    def exc_info(exc: BaseException) -> dict[str, Any]:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])
        return {"type": type(exc).__name__, "msg": str(exc)[:500], "tb": tb[-2000:]}

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        if op == "load":
            try:
                code = compile(msg["program"], "<program>", "exec")
            except (SyntaxError, ValueError) as exc:
                return {"ok": False, "exc": self.exc_info(exc), "phase": "compile"}
            exec(code, self.ns)  # noqa: S102 - this is the sandboxed program
            if msg.get("setup"):
                exec(compile(msg["setup"], "<test_setup>", "exec"), self.ns)  # noqa: S102
            return {"ok": True}
        if op == "resolve":
            return {"ok": True, "values": {n: self.enc(self.ns[n]) for n in msg["names"] if n in self.ns}}
        target = self.resolve(msg["target"])
        if op == "getattr":
            return {"ok": True, "value": self.enc(getattr(target, str(msg["name"])))}
        if op == "call":
            args = [self.resolve(a) for a in msg["args"]]
            kwargs = {str(k): self.resolve(v) for k, v in msg["kwargs"].items()}
            value = target(*args, **kwargs)
            after = [self.enc(a) if type(a) in (list, dict, set) else None for a in args]
            return {"ok": True, "value": self.enc(value), "args_after": after}
        raise ValueError(f"unknown op {op!r}")

    def serve(self) -> None:
        while True:
            try:
                msg = wire.recv_msg(self.sock)
            except EOFError:
                return
            try:
                reply = self.handle(msg)
            except BaseException as exc:  # noqa: BLE001 - every program failure is reported, not fatal
                reply = {"ok": False, "exc": self.exc_info(exc)}
            try:
                wire.send_msg(self.sock, reply)
            except (ValueError, TypeError, RecursionError, wire.ProtocolError) as exc:
                wire.send_msg(self.sock, {"ok": False, "exc": self.exc_info(exc)})


def child_main(sock: socket.socket, viol_fd: int, workdir: str, limits: dict[str, int], uid: int | None) -> None:
    """Entry of a forked child; never returns."""
    code = 0
    try:
        root = confine([sock.fileno(), viol_fd], workdir, limits, uid)
        for name in _blocked_loaded():
            sys.modules.pop(name, None)
        hook.install(viol_fd, root, *(_PREPARED.get("reads") or hook.read_roots()),
                     kernel_refuses_processes=seccomp.supported() and limits["nproc"] <= 1,
                     kernel_confines_writes=bool(_PREPARED.get("landlocked")))
        sys.setrecursionlimit(3000)
        _Server(sock).serve()
    except BaseException:  # noqa: BLE001 - a child must never fall back into the template's loop
        code = 1
    os._exit(code)
