"""A warm template process: ``python -m engine.sandbox.template CONFIG_JSON``.

Started once per pool slot (inside a fresh network namespace when the OS allows), it
pre-imports what benchmark programs use and then forks, per check, a confined child
(pre-forked while idle, before the job it will serve exists) and a trusted runner.
It never executes a program itself. Lines on stdout: ``ready``, then per job
``started`` (pids) and ``done`` (the runner's verdict line and the child's status).
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import traceback
from dataclasses import dataclass
from typing import Any

from engine.sandbox import landlock, wire
from engine.sandbox.child import child_main
from engine.sandbox.runner import run_tests

# What benchmark programs import, loaded once here so no check pays for it (and so a child
# under an unprivileged uid need not read them from a home directory it cannot enter).
PRELOAD = (
    "abc array ast base64 binascii bisect calendar cmath collections collections.abc contextlib copy "
    "csv dataclasses datetime decimal difflib encodings.idna enum fractions functools hashlib heapq io itertools json "
    "keyword math numbers operator pprint queue random re statistics string struct textwrap time types "
    "typing unicodedata weakref zlib"
).split()


@dataclass
class Warm:
    pid: int
    workdir: str
    sock: socket.socket
    viol_r: int


def _rmtree(path: str) -> None:
    def fix(func: Any, p: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)


def _warm_up() -> None:
    """Pay one-time costs (the compiler's first run, first calls of both sides' code paths)
    in the template, then freeze the heap so children's collections do not copy its pages."""
    import gc

    from engine.sandbox.child import _Server
    from engine.sandbox.runner import Connection, free_names

    for name in PRELOAD:
        importlib.import_module(name)
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
    free_names(ast.parse("assert f([1]) == [2]\n"))
    exec(compile("assert [1] == [1]\n", "<warm>", "exec"), {"f": f})  # noqa: S102 - our own constant
    try:
        raise ValueError("warm")
    except ValueError as exc:
        traceback.format_exception(type(exc), exc, exc.__traceback__)
    ours.close()
    theirs.close()
    gc.collect()
    gc.freeze()


class Template:
    """One slot's template: pre-fork a child, run the next job's tests against it, clean up."""

    def __init__(self, cfg: dict[str, Any], out: int) -> None:
        self.base: str = cfg["base"]
        self.uid: int | None = cfg.get("uid")
        self.limits: dict[str, int] = cfg["limits"]
        self.out = out

    def prefork(self) -> Warm:
        workdir = tempfile.mkdtemp(prefix="run-", dir=self.base)
        if self.uid is not None:
            os.chown(workdir, self.uid, self.uid)
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        viol_r, viol_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                parent_sock.close()
                os.close(viol_r)
                child_main(child_sock.detach(), viol_w, workdir, self.limits, self.uid)
            finally:
                os._exit(1)
        child_sock.close()
        os.close(viol_w)
        return Warm(pid, workdir, parent_sock, viol_r)

    def run_job(self, job: dict[str, Any], warm: Warm) -> Warm:
        """Run one job's tests here, against the warm child; report; clean up; pre-fork the next."""
        wire.write_line(self.out, {"type": "started", "child": warm.pid})
        try:
            result = run_tests(job, warm.sock, warm.viol_r, warm.pid, warm.workdir)
        finally:
            warm.sock.close()
            os.close(warm.viol_r)
            try:
                os.killpg(warm.pid, signal.SIGKILL)
            except OSError:
                pass
            _, child_status = os.waitpid(warm.pid, 0)
            _rmtree(warm.workdir)
        wire.write_line(self.out, {"type": "done", "result": result, "child_status": child_status})
        return self.prefork()  # before the next job line is read: a child never sees its own job

    def serve(self) -> None:
        _warm_up()
        warm = self.prefork()
        wire.write_line(self.out, {"type": "ready", "pid": os.getpid(), "uid": self.uid,
                                   "landlock": landlock.abi()})
        buf = b""
        while True:
            chunk = os.read(0, 1 << 20)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                warm = self.run_job(json.loads(line), warm)
        os.kill(warm.pid, signal.SIGKILL)
        os.waitpid(warm.pid, 0)
        _rmtree(warm.workdir)


def main() -> None:
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG: go when the pool goes
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no /proc/<pid>/fd|mem for others
    out = os.dup(1)  # protocol lines only; anything the tests print goes to /dev/null
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    Template(json.loads(sys.argv[1]), out).serve()


if __name__ == "__main__":
    main()
