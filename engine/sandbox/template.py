"""A warm template process: ``python -m engine.sandbox.template CONFIG_JSON``.

Started once per pool slot (inside a fresh network namespace when the OS allows), it
pre-imports what benchmark programs use, forks its zygote (``zygote.py``), which forks
a confined child per check (pre-forked while idle, before the job it will serve
exists), and runs each check's tests itself against that child. It never executes a
program. Lines on stdout: ``ready``, then per job ``started`` (pids) and ``done`` (the
runner's verdict line and the child's status).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import signal
import socket
import sys
import traceback
import types
from typing import Any

from engine.sandbox import bwrap, landlock, seccomp, wire, zygote
from engine.sandbox.runner import run_tests

# What benchmark programs import, loaded once here so no check pays for it (and so a child
# under an unprivileged uid need not read them from a home directory it cannot enter).
PRELOAD = (
    "abc array ast base64 binascii bisect calendar cmath collections collections.abc contextlib copy "
    "csv dataclasses datetime decimal difflib encodings.idna enum fractions functools hashlib heapq io itertools json "
    "keyword math numbers operator pprint random re statistics string struct textwrap time types "
    "typing unicodedata weakref zlib"
).split()
# Read into memory, imported only by a program that asks: importing threading (queue's
# dependency) registers an at-fork handler that cost every forked child ~0.3 ms.
IN_MEMORY = ("queue", "threading")
class _MemoryModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a few stdlib modules from code read in the template (a child under its own uid
    may not be able to read the stdlib's files)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.code: dict[str, tuple[str, Any]] = {}
        for name in names:
            spec = importlib.util.find_spec(name)
            if spec and spec.origin and isinstance(spec.loader, importlib.abc.InspectLoader):
                self.code[name] = (spec.origin, spec.loader.get_code(name))

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in self.code:
            return None
        return importlib.util.spec_from_loader(name, self, origin=self.code[name][0])

    def exec_module(self, module: types.ModuleType) -> None:
        origin, code = self.code[module.__name__]
        module.__file__ = origin
        exec(code, module.__dict__)  # noqa: S102 - the stdlib's own code


def _warm_up() -> None:
    """Pay one-time costs (the compiler's first run, first calls of both sides' code paths)
    in the template, then freeze the heap so children's collections do not copy its pages."""
    import gc

    from engine.sandbox.child import _Server
    from engine.sandbox.runner import Connection, free_names

    if not any(isinstance(f, _MemoryModules) for f in sys.meta_path):
        sys.meta_path.insert(0, _MemoryModules(tuple(n for n in IN_MEMORY if n not in sys.modules)))
    for name in PRELOAD:
        importlib.import_module(name)
    for name in bwrap.OPTIONAL:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    ours, theirs = socket.socketpair()
    server, conn = _Server(theirs), Connection(ours, float("inf"))
    program = 'import math\ndef f(a, b=2):\n    """doc"""\n    return [x * b for x in a]\n'
    for msg in ({"op": "load", "program": program, "setup": "y = 1"}, {"op": "resolve", "names": ["f", "y"]},
                {"op": "call", "target": {"g": "f"}, "args": [{"l": [1, 2.5]}], "kwargs": {}},
                {"op": "call", "target": {"g": "f"}, "args": [None], "kwargs": {}}):
        wire.send_msg(ours, msg)
        try:
            reply = server.handle(wire.recv_msg(theirs))
        except TypeError as exc:  # f(None): the error path
            reply = {"ok": False, "exc": server.exc_info(exc)}
        wire.send_msg(theirs, reply)
        wire.recv_msg(ours)
    f = conn._ref(0, "function")
    free_names("assert f([1]) == [2]\n")
    exec(compile("assert [1] == [1]\n", "<warm>", "exec"), {"f": f})  # noqa: S102 - our own constant
    try:
        raise ValueError("warm")
    except ValueError as exc:
        traceback.format_exception(type(exc), exc, exc.__traceback__)
    ours.close()
    theirs.close()
    gc.collect()
    gc.freeze()


def _mount(source: str, target: str, fstype: str | None, flags: int, opts: str | None = None) -> bool:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                      opts.encode() if opts else None) == 0


def _mount_tmpfs(path: str, size_mb: int) -> bool:
    """In the template's own mount namespace (``unshare --mount``, without bubblewrap): a tmpfs of
    ``size_mb`` on the work area, the total disk quota of a program, private to this slot."""
    return _mount("tmpfs", path, "tmpfs", 2 | 4, f"size={size_mb}m,mode=0711")  # MS_NOSUID | MS_NODEV


def _private_view(switch_uid: bool) -> None:
    """In that namespace, what bubblewrap does for its templates: every site-packages directory
    masked by an empty tmpfs, the preloaded packages bound back (datasets ship in packages);
    and when children switch uid, an interpreter under a directory others cannot enter
    (``/root/.pyenv``) bound onto a traversable tmpfs that hides the rest of that directory,
    so every standard-library module imports in a child."""
    prefix = os.path.realpath(sys.base_prefix)
    keep = {p: os.open(p, os.O_PATH) for p in [prefix, *bwrap.packages()]}  # before anything is covered
    try:
        closed = [d for d in _ancestors(prefix) if not os.stat(d).st_mode & 0o001]
        if switch_uid and closed and _mount("tmpfs", closed[0], "tmpfs", 2 | 4, "size=1m,mode=0755"):
            os.makedirs(prefix, 0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{keep[prefix]}", prefix, None, 4096 | 16384)  # MS_BIND | MS_REC
        masked = [d for d in bwrap.site_dirs() if os.path.isdir(d)
                  and _mount("tmpfs", d, "tmpfs", 2 | 4, "size=1m,mode=0755")]
        for pkg, fd in keep.items():
            if any(pkg.startswith(d + "/") for d in masked):
                os.makedirs(pkg, 0o755, exist_ok=True)
                _mount(f"/proc/self/fd/{fd}", pkg, None, 4096 | 16384)
    finally:
        for fd in keep.values():
            os.close(fd)


def _ancestors(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[:i + 1]) for i in range(len(parts))]


class Template:
    """One slot's template: run each job's tests against the zygote's pre-forked child."""

    def __init__(self, cfg: dict[str, Any], out: int) -> None:
        self.base: str = cfg["base"]
        self.uid: int | None = cfg.get("uid")
        self.limits: dict[str, int] = cfg["limits"]
        self.cfg = cfg
        self.out = out

    def run_job(self, job: dict[str, Any], warm: zygote.Warm) -> zygote.Warm:
        """Run one job's tests here, against the warm child; report; take the next child."""
        wire.write_line(self.out, {"type": "started", "child": warm.pid})
        try:
            result = run_tests(job, warm.sock, warm.viol_r, warm.pid, warm.workdir)
        except Exception as exc:  # noqa: BLE001 - a verdict, never a dead template
            result = {"status": "error", "error_type": "HarnessError", "nonce": job.get("nonce"),
                      "detail": f"test runner failed: {type(exc).__name__}: {str(exc)[:300]}"}
        finally:
            warm.sock.close()
            os.close(warm.viol_r)
        child_status = zygote.reap(self.ctl)  # killed, reaped, its directory removed
        wire.write_line(self.out, {"type": "done", "result": result, "child_status": child_status})
        return zygote.next_child(self.ctl)

    def serve(self) -> None:
        tmpfs = self.cfg.get("mount_tmpfs") and _mount_tmpfs(self.base, int(self.limits["disk_mb"]))
        if tmpfs:
            _private_view(self.uid is not None)
        _warm_up()
        self.zygote_pid, self.ctl = zygote.start(self.base, self.limits, self.uid)
        self.ctl.send(b"next")
        warm = zygote.next_child(self.ctl)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)  # ready: nothing more for the start-up log
        os.close(devnull)
        wire.write_line(self.out, {"type": "ready", "pid": os.getpid(), "uid": self.uid,
                                   "landlock": landlock.abi() if self.limits.get("landlock", True) else 0,
                                   "seccomp": seccomp.supported(), "tmpfs": bool(tmpfs)})
        buf = b""
        while True:
            chunk = os.read(0, 1 << 20)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                warm = self.run_job(json.loads(line), warm)  # the manager's own lines
        warm.sock.close()
        os.close(warm.viol_r)
        self.ctl.close()  # the zygote kills and reaps its child, then exits
        os.waitpid(self.zygote_pid, 0)


def main() -> None:
    import ctypes
    import resource

    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG: go when the pool goes
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no /proc/<pid>/fd|mem for others
    out = os.dup(1)  # protocol lines only; anything the tests print goes to /dev/null
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    cfg = json.loads(sys.argv[1])
    # `-m` put the cwd first on the import path: not the work area (a program's import would list it)
    sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd(), cfg["base"])]
    # the trusted side holds what the program returns: a `list(range(10**9))` in a test is an
    # oom verdict, not the host's memory
    limit = max(4096, 2 * int(cfg["limits"]["memory_mb"])) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    Template(cfg, out).serve()


if __name__ == "__main__":
    main()
