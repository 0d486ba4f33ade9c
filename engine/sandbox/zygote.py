"""The fork server: one per template, a process that does nothing but fork confined children.

Forked from the template once, after the warm-up. Why a process of its own: a forked
child shares its parent's pages copy-on-write, and the template, which runs every
check's tests, wrote to some 600 of them per check while its pre-forked child was
alive, paying a page copy for each (about a fifth of a check's CPU). This process
barely writes between forks. It never receives a job: it forks the next child as soon
as the previous one is reaped, so nothing about a job can exist in a child's memory.

Protocol on a ``SOCK_SEQPACKET`` pair with the template: the template sends ``next``;
the zygote SIGKILLs and reaps the current child (replying its wait status), removes its
directory, makes a fresh one, forks the next child and replies ``pid workdir`` with the
runner's ends of the call socket and the violation pipe (SCM_RIGHTS).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
from dataclasses import dataclass

from engine.sandbox.child import MAX_FD, _prctl, child_main, prepare
from engine.sandbox.tree import remove_tree

STATUS = struct.Struct("!i")


@dataclass
class Warm:
    """A pre-forked child, as the template sees it."""

    pid: int
    workdir: str
    sock: socket.socket
    viol_r: int


def rmtree(path: str) -> None:
    """Remove a child's directory, whatever depth, modes and kinds of file the program left."""
    try:  # the common case: the program wrote nothing but its output file
        os.unlink(os.path.join(path, ".output"))
        os.rmdir(path)
        return
    except OSError:
        pass
    remove_tree(path)  # never raises; what it cannot remove stays (counted in the tmpfs quota)


def _fork_child(base: str, n: int, limits: dict[str, int], uid: int | None) -> tuple[int, str, socket.socket, int]:
    workdir = os.path.join(base, f"run-{os.getpid()}-{n}")
    os.mkdir(workdir, 0o700)
    if uid is not None:
        os.chown(workdir, uid, uid)
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    viol_r, viol_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            parent_sock.close()
            os.close(viol_r)
            child_main(child_sock, viol_w, workdir, limits, uid)
        finally:
            os._exit(1)
    child_sock.close()
    os.close(viol_w)
    return pid, workdir, parent_sock, viol_r


def serve(ctl: socket.socket, base: str, limits: dict[str, int], uid: int | None, parent: int) -> None:
    """The zygote's loop (in the forked process); returns when the template goes."""
    _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: go with the template
    if os.getppid() != parent:
        return
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # not the manager's job pipe
    for lo, hi in ((3, ctl.fileno()), (ctl.fileno() + 1, MAX_FD)):
        os.closerange(lo, hi)  # nor the template's protocol pipe, nor anything else of its
    prepare()
    current: tuple[int, str] | None = None
    n = 0
    try:
        while ctl.recv(16):
            if current is not None:
                try:
                    os.killpg(current[0], signal.SIGKILL)
                except OSError:
                    pass
                ctl.send(STATUS.pack(os.waitpid(current[0], 0)[1]))
                rmtree(current[1])
                current = None
            n += 1
            pid, workdir, sock, viol_r = _fork_child(base, n, limits, uid)
            current = (pid, workdir)
            socket.send_fds(ctl, [f"{pid} {workdir}".encode()], [sock.fileno(), viol_r])
            sock.close()
            os.close(viol_r)
    except Exception:  # noqa: BLE001 - the template sees the zygote gone and exits; the pool restarts it
        pass
    if current is not None:
        try:
            os.killpg(current[0], signal.SIGKILL)
        except OSError:
            pass
        os.waitpid(current[0], 0)
        rmtree(current[1])


def start(base: str, limits: dict[str, int], uid: int | None) -> tuple[int, socket.socket]:
    """Fork the zygote from the (warm) template: its pid and the template's end of the pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            serve(theirs, base, limits, uid, parent)
        finally:
            os._exit(0)
    theirs.close()
    return pid, ours


def next_child(ctl: socket.socket) -> Warm:
    """Receive the child the zygote forked after the last ``next``."""
    msg, fds, _, _ = socket.recv_fds(ctl, 4096, 2)
    if len(fds) != 2:
        raise RuntimeError(f"zygote sent no child: {msg!r}")
    pid, workdir = msg.decode().split(" ", 1)
    return Warm(int(pid), workdir, socket.socket(fileno=fds[0]), fds[1])


def reap(ctl: socket.socket) -> int:
    """Ask for the current child to be killed and reaped and the next forked; its wait status."""
    ctl.send(b"next")
    data = ctl.recv(STATUS.size)
    if len(data) != STATUS.size:
        raise RuntimeError("zygote went away")
    return STATUS.unpack(data)[0]
