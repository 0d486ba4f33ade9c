"""The trusted side: run a benchmark's tests against the program living in the child.

The tests execute in the template process, which never runs a byte of the program. Names the
tests use but do not define are resolved in the child: plain data comes back as
builtin values, functions and other objects as ``Remote`` handles whose calls cross
the socket. So the asserts compare values this process built itself, with its own
builtins and modules; the child can only answer calls, die, or be blocked.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import os
import select
import signal
import socket
import stat
import symtable
import sys
import time
from collections.abc import Iterator
from typing import Any

from engine.sandbox import wire

# control-flow exceptions never come back as themselves: a remote StopIteration would end an
# `all(map(candidate, xs))` early, as a pass
_NO_MAP = {"SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseException", "StopIteration", "StopAsyncIteration"}


class RemoteError(Exception):
    """An exception raised in the child whose type has no builtin twin here."""


class ChildGone(BaseException):
    """The child exited or broke the protocol; a test's ``except Exception`` cannot swallow it."""


class BadReply(ChildGone):
    """The child answered with something that is not a well-formed value (its verdict says so,
    not how the child was ended afterwards)."""


class CallTimeout(BaseException):
    """The wall-clock budget ran out while waiting for the child."""


def free_names(source: str) -> set[str]:
    """Names the code loads that none of its scopes binds and builtins do not provide.

    Read from the compiler's symbol tables (no Python AST is built: ~2x faster, and the
    tests are compiled from source anyway); a name bound in any scope counts as bound.
    """
    loads, binds = set(), set()
    tables = [symtable.symtable(source, "<tests>", "exec")]
    while tables:
        table = tables.pop()
        for sym in table.get_symbols():
            if sym.is_referenced():
                loads.add(sym.get_name())
            if sym.is_assigned() or sym.is_parameter() or sym.is_imported():
                binds.add(sym.get_name())
        tables.extend(table.get_children())
    return loads - binds - builtins.__dict__.keys()


class Remote:
    """A handle on an object in the child that is not plain data (a function, an instance of
    the program's class): callable, attribute access, identity equality; true when its class
    defines neither ``__bool__`` nor ``__len__`` (as in-process), else no truth value."""

    __slots__ = ("_conn", "_enc", "_true", "_type")

    def __init__(self, conn: Connection, enc: dict[str, Any], type_name: str, true: bool = False) -> None:
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_enc", enc)
        object.__setattr__(self, "_type", type_name)
        object.__setattr__(self, "_true", true)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._conn.call(self, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._conn.request({"op": "getattr", "target": self._enc, "name": name})["value"]

    def __bool__(self) -> bool:
        if self._true:
            return True
        # the program's own __bool__ cannot run here, and a made-up answer could pass `assert f(x)`
        raise TypeError(f"the truth value of a sandboxed {self._type} is not available to the tests")

    def __repr__(self) -> str:
        return f"<sandboxed {self._type}>"


class Connection:
    """The runner's end of the call socket, with a deadline for every wait."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.fatal: BaseException | None = None
        self.buf = bytearray()
        self.types: dict[tuple, type] = {}  # namedtuple classes built for this job

    def decode(self, value: Any) -> Any:
        return wire.decode(value, self._ref, types=self.types)

    @contextlib.contextmanager
    def limit(self, seconds: float) -> Iterator[None]:
        """``__pmat_deadline__``: calls into the program inside the block must answer within
        ``seconds`` (the job's own deadline stays the outer bound); a late one ends the job
        as a timeout, whatever the test code does with the exception."""
        outer = self.deadline
        self.deadline = min(outer, time.monotonic() + float(seconds))
        try:
            yield
        finally:
            self.deadline = outer

    def _ref(self, handle: int, type_name: str, true: bool = False) -> Remote:
        return Remote(self, {"ref": handle}, type_name, true)

    @staticmethod
    def _handle(value: Any) -> dict[str, Any]:
        """How an argument that is not plain data goes in: a handle the child gave us, or a
        builtin (``int``, ``len``) by name."""
        if isinstance(value, Remote):
            return value._enc
        name = getattr(value, "__name__", None)
        if isinstance(name, str) and getattr(builtins, name, None) is value:
            return {"bi": name}
        raise TypeError(f"cannot pass a {type(value).__name__} into the sandbox")

    def _out(self, value: Any) -> Any:
        return wire.encode(value, self._handle)

    def send(self, *msgs: dict[str, Any]) -> None:
        """Write requests in one go; the child answers each, in order."""
        if self.fatal is not None:
            raise self.fatal
        try:
            self.sock.settimeout(max(0.001, self.deadline - time.monotonic()))
            self.sock.sendall(b"".join(wire.pack_msg(m) for m in msgs))
        except TimeoutError:  # the child stopped reading: the same as not answering
            self.fatal = CallTimeout("wall-clock limit reached")
            raise self.fatal from None
        except (OSError, wire.ProtocolError) as exc:
            self.fatal = ChildGone(f"{type(exc).__name__}: {exc}")
            raise self.fatal from None

    def receive(self) -> dict[str, Any]:
        """The next reply, decoded; the child's exception re-raised here if it raised one."""
        if self.fatal is not None:
            raise self.fatal
        try:
            reply = self._read()
            if not isinstance(reply, dict):
                raise wire.ProtocolError("reply is not an object")
            if reply.get("ok"):
                for key in ("value", "values"):
                    if key in reply:
                        reply[key] = (self.decode(reply[key]) if key == "value" else
                                      {str(k): self.decode(v) for k, v in reply[key].items()})
                return reply
        except TimeoutError:
            self.fatal = CallTimeout("wall-clock limit reached")
            raise self.fatal from None
        except wire.ProtocolError as exc:
            self.fatal = BadReply(str(exc))
            raise self.fatal from None
        except (EOFError, OSError) as exc:
            self.fatal = ChildGone(f"{type(exc).__name__}: {exc}")
            raise self.fatal from None
        raise remote_exception(reply.get("exc") or {}, reply.get("phase"))

    def _read(self) -> Any:
        """One framed message, read in as few ``recv`` calls as it arrived in, before the deadline."""
        buf = self.buf
        while True:
            if len(buf) >= wire.HEADER.size:
                (size,) = wire.HEADER.unpack_from(buf)
                if size > wire.MAX_MESSAGE:
                    raise wire.ProtocolError(f"message of {size} bytes exceeds {wire.MAX_MESSAGE}")
                end = wire.HEADER.size + size
                if len(buf) >= end:
                    data = bytes(buf[wire.HEADER.size:end])
                    del buf[:end]
                    return wire.loads(data)
            self.sock.settimeout(max(0.001, self.deadline - time.monotonic()))
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("peer closed the connection")
            buf += chunk

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.send(msg)
        return self.receive()

    def call(self, target: Remote, args: tuple, kwargs: dict[str, Any]) -> Any:
        reply = self.request({"op": "call", "target": target._enc, "args": [self._out(a) for a in args],
                              "kwargs": {k: self._out(v) for k, v in kwargs.items()}})
        for arg, after in zip(args, reply.get("args_after") or [], strict=False):
            if after is not None and type(arg) in (list, dict, set):
                new = self.decode(after)
                if type(new) is type(arg) and new != arg:
                    arg.clear()
                    arg.update(new) if not isinstance(arg, list) else arg.extend(new)
        return reply["value"]


def remote_exception(info: dict[str, Any], phase: str | None = None) -> BaseException:
    """Rebuild the child's exception as a builtin exception here (or RemoteError)."""
    name, msg = str(info.get("type", "Exception")), str(info.get("msg", ""))
    cls = getattr(builtins, name, None)
    exc: BaseException
    try:
        if not (isinstance(cls, type) and issubclass(cls, Exception)) or name in _NO_MAP:
            raise TypeError
        exc = cls(msg)
    except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments
        exc = RemoteError(f"{name}: {msg}")
    exc.pmat_remote = {"type": name, "msg": msg, "tb": str(info.get("tb", ""))[-2000:], "phase": phase}
    return exc


def _read_violation(fd: int) -> str | None:
    if not select.select([fd], [], [], 0)[0]:
        return None
    data = os.read(fd, 4096)
    return data.decode(errors="replace").splitlines()[0] if data else None


def _tail(workdir: str, n: int = 2000) -> str:
    """The end of what the program printed; '' if it replaced its output file by anything but
    a regular file (a directory, a FIFO, a link)."""
    try:
        fd = os.open(os.path.join(workdir, ".output"), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        os.lseek(fd, max(0, st.st_size - n), 0)
        return os.read(fd, n).decode(errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def classify(exc: BaseException | None) -> dict[str, Any]:
    """Map the outcome of the tests to a verdict category."""
    if exc is None:
        return {"status": "passed", "error_type": None, "detail": ""}
    if isinstance(exc, CallTimeout):
        return {"status": "timeout", "error_type": None, "detail": str(exc)}
    if isinstance(exc, BadReply):
        return {"status": "error", "error_type": "ProtocolError", "detail": f"reply of the program not accepted: {exc}"}
    if isinstance(exc, ChildGone):
        return {"status": "error", "error_type": "EarlyExit", "detail": f"program process ended: {exc}"}
    info = getattr(exc, "pmat_remote", None)
    name = info["type"] if info else type(exc).__name__
    detail = (info["tb"] if info else f"{name}: {exc}")[-1500:]
    if info and info.get("phase") == "compile":
        return {"status": "syntax_error", "error_type": name, "detail": detail}
    if name == "MemoryError":
        return {"status": "oom", "error_type": name, "detail": detail}
    if name == "AssertionError":
        return {"status": "failed", "error_type": name, "detail": detail}
    return {"status": "error", "error_type": name, "detail": detail}


def run_tests(job: dict[str, Any], sock: socket.socket, viol_fd: int, child_pid: int, workdir: str) -> dict:
    """Run one job's tests against the child behind ``sock``; the verdict line (with the nonce)."""
    load = {"op": "load", "program": job["program"], "setup": job.get("setup", "")}
    aliases: dict[str, str] = dict(job.get("aliases") or {})
    conn = Connection(sock, float("inf"))
    outcome: BaseException | None = None
    start = time.monotonic()
    try:
        broken: BaseException | None = None
        try:  # the tests are read before the program's clock starts
            free = free_names(job["runner_code"]) - set(aliases) - {"__pmat_deadline__"}
            code = compile(job["runner_code"], "<tests>", "exec")
        except (SyntaxError, ValueError) as exc:
            free, broken = set(), exc
        # a module the tests use without importing (MBPP's `math.isclose`) is this process's own
        # copy, never the program's (which it may have patched)
        local = {n: importlib.import_module(n) for n in free if n in sys.stdlib_module_names}
        free -= set(local)
        start = time.monotonic()
        conn.deadline = start + float(job["timeout"])
        if broken is not None:  # broken tests: the program's own errors still come first
            conn.request(load)
            raise broken
        # one write, one wake-up: the child loads the program, then looks up the names
        conn.send(load, {"op": "resolve", "names": sorted(free | set(aliases.values()))})
        conn.receive()
        found = conn.receive()["values"]
        ns: dict[str, Any] = {"__name__": "__pmat_tests__", "__builtins__": builtins, **local,
                              "__pmat_deadline__": conn.limit}
        ns.update({k: found[k] for k in free if k in found})  # builtins shadowed only via aliases
        ns.update({alias: found[target] for alias, target in aliases.items() if target in found})
        exec(code, ns)  # noqa: S102 - benchmark tests, trusted
        if conn.fatal is not None:
            outcome = conn.fatal
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a verdict
        outcome = conn.fatal or exc
    verdict = classify(outcome)
    blocked = _read_violation(viol_fd)
    if blocked is None and isinstance(outcome, ChildGone):
        time.sleep(0.01)  # the hook writes before it exits; give a dying child's line time to land
        blocked = _read_violation(viol_fd)
    if blocked:
        verdict = {"status": "blocked", "error_type": None, "detail": f"forbidden operation: {blocked}"}
    try:
        os.killpg(child_pid, signal.SIGKILL)
    except OSError:
        pass
    verdict.update(nonce=job["nonce"], blocked_op=blocked, wall_s=round(time.monotonic() - start, 6),
                   stdout_tail=_tail(workdir))
    return verdict
