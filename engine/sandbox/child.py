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

from engine.sandbox import landlock, wire

BLOCKED_EXIT = 86
_PROC_EVENTS = {
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
    "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit", "resource.prlimit",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "webbrowser.open", "urllib.Request",
    "sys._current_frames", "os.setxattr", "os.removexattr", "os.chroot", "os.mknod", "os.mkfifo",
}
_PATH_EVENTS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (1,),
    "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.mkdir": (0,), "os.utime": (0,),
    "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (1,),
    "shutil.chown": (0,), "os.chflags": (0,), "os.lchflags": (0,), "os.chdir": (0,),
}
_BLOCKED_IMPORTS = {"ctypes", "_ctypes", "cffi", "_posixsubprocess", "_xxsubinterpreters", "_testcapi"}
MAX_FD = 1 << 30  # above any RLIMIT_NOFILE
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


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


def confine(keep: list[int], workdir: str, limits: dict[str, int], uid: int | None) -> None:
    """Apply every process-level measure; after this the process holds only ``keep`` fds."""
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
    mb = 1 << 20
    cpu = limits["cpu_s"]
    nproc = limits["nproc"]
    if uid is None:  # the count is per user: leave room for what the user already runs
        nproc += _count_tasks(os.getuid())
    for res, value in (
        (resource.RLIMIT_AS, limits["memory_mb"] * mb),
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_NPROC, nproc),
        (resource.RLIMIT_FSIZE, limits["fsize_mb"] * mb),
        (resource.RLIMIT_NOFILE, limits["nofile"]),
        (resource.RLIMIT_CORE, 0),
    ):
        soft, hard = value if isinstance(value, tuple) else (value, value)
        resource.setrlimit(res, (soft, hard))
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _prctl(38, 1)  # PR_SET_NO_NEW_PRIVS: setuid binaries gain nothing (and Landlock may apply)
    landlock.restrict(workdir)  # kernel: writes only beneath workdir, no exec, no signals out (if present)
    _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the zygote (after setuid, which clears it)
    sys.stdout = _PREPARED.get("stdout") or open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = sys.stdout  # print goes to .output, by line


def prepare() -> None:
    """Build, once in the zygote, what every child would otherwise build for itself: each
    object a child creates or first touches costs it page faults (~3 us each)."""
    landlock.abi()
    _PREPARED["stdout"] = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - fd 1 is .output in a child
    _PREPARED["modules"] = len(sys.modules)
    _PREPARED["blocked"] = [n for n in sys.modules if n.split(".")[0] in _BLOCKED_IMPORTS]


def _blocked_loaded() -> list[str]:
    """Loaded modules that the hook's import check could not see again (cached ones never
    raise the ``import`` event). The zygote's list, unless a module was imported since."""
    if _PREPARED.get("modules") == len(sys.modules):
        return _PREPARED["blocked"]
    return [n for n in sys.modules if n.split(".")[0] in _BLOCKED_IMPORTS]


def _install_hook(viol_fd: int, workdir: str) -> None:
    """Arm a permanent audit hook: a forbidden operation is named on the pipe, then exit."""
    root = os.path.realpath(workdir)
    exit_now, write, fspath = os._exit, os.write, os.fspath
    realpath, abspath, isdir = os.path.realpath, os.path.abspath, os.path.isdir
    allowed_files = {"/dev/null"}

    def violate(what: str) -> None:
        try:
            write(viol_fd, what.encode(errors="replace")[:400] + b"\n")
        finally:
            exit_now(BLOCKED_EXIT)

    def text_of(path: Any) -> str:
        return path.decode(errors="replace") if isinstance(path, bytes) else str(fspath(path))

    def inside(path: Any) -> bool:
        if isinstance(path, int):
            return True
        try:
            p = realpath(text_of(path))  # relative paths against the current cwd, links followed
        except (OSError, ValueError):
            return False  # a path the hook cannot resolve is not known to be inside
        return p == root or p.startswith(root + "/") or p in allowed_files

    def under_proc(text: str) -> bool:
        if abspath(text).startswith("/proc/"):  # the link as written: no resolution needed
            return not abspath(text).startswith("/proc/self/stat")
        try:
            target = realpath(text)
        except (OSError, ValueError):
            return True
        return target.startswith("/proc/") and not target.startswith("/proc/self/stat")

    def hook(event: str, args: tuple) -> None:
        if event in _PROC_EVENTS or event.startswith(("ctypes.", "socket.")):
            violate(event)
        elif event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            if isinstance(path, int):
                return
            text = text_of(path)
            if under_proc(text):
                violate(f"open {text}")
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing and not inside(path):
                violate(f"open for writing {text}")
            # os.open of a directory outside gives a dir_fd that *at() calls would write through
            if isinstance(flags, int) and not inside(path) and isdir(text):
                violate(f"open directory {text}")
        elif event in _PATH_EVENTS:
            for i in _PATH_EVENTS[event]:
                if i < len(args) and args[i] is not None and not inside(args[i]):
                    violate(f"{event} {args[i]}")
        elif event == "import" and str(args[0]).split(".")[0] in _BLOCKED_IMPORTS:
            violate(f"import {args[0]}")

    for name in _blocked_loaded():
        sys.modules.pop(name, None)
    sys.addaudithook(hook)


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
        return wire.decode(enc, lambda h, _t: self.handles[h], extra=self._named)

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
        confine([sock.fileno(), viol_fd], workdir, limits, uid)
        _install_hook(viol_fd, workdir)
        sys.setrecursionlimit(3000)
        _Server(sock).serve()
    except BaseException:  # noqa: BLE001 - a child must never fall back into the template's loop
        code = 1
    os._exit(code)
