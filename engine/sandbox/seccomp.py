"""A seccomp filter for the child: system calls no benchmark program needs, refused by the kernel.

Why a kernel layer under the audit hook: the hook sees only what Python reports, and a
non-root pool has no uid of its own to run programs under. The filter (installed after
no_new_privs, before any program byte runs, inherited by nothing since nothing can be
started) makes these calls fail with EPERM whatever the program does in Python:

- new processes and threads (``fork``, ``vfork``, ``clone``, ``clone3``), ``execve``;
- sockets of any kind, ``memfd_create`` (memory outside ``RLIMIT_AS``), System V shared
  memory, message queues and semaphores, POSIX message queues (they outlive the process);
- other processes: ``ptrace``, ``process_vm_*``, ``pidfd_*``, ``kcmp``, signals to any
  process but itself, ``prlimit64`` on another process, priorities, affinities and pages of
  any process (a same-uid program could slow the harness down);
- namespaces and mounts (``unshare``, ``setns``, ``mount`` and the new mount API),
  ``io_uring``, ``userfaultfd``, ``bpf``, ``perf_event_open``, keyrings, ``mknod``.

An unknown architecture, or an x32 system call on x86-64, kills the process.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

_LD_ABS, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06
_ALLOW, _KILL, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000 | errno.EPERM
_ARG0_LO, _ARG0_HI = 16, 20  # seccomp_data.args[0], little-endian halves

# name: (x86_64, aarch64); None where the architecture has no such call
_CALLS = {
    "fork": (57, None), "vfork": (58, None), "clone": (56, 220), "clone3": (435, 435),
    "execve": (59, 221), "execveat": (322, 281), "socket": (41, 198), "socketpair": (53, 199),
    "memfd_create": (319, 279), "memfd_secret": (447, 447), "shmget": (29, 194), "shmat": (30, 196),
    "msgget": (68, 186), "semget": (64, 190), "mq_open": (240, 180),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "pidfd_open": (434, 434), "pidfd_getfd": (438, 438), "pidfd_send_signal": (424, 424), "kcmp": (312, 272),
    "rt_sigqueueinfo": (129, 138), "rt_tgsigqueueinfo": (297, 240),
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39),
    "pivot_root": (155, 41), "chroot": (161, 51), "open_tree": (428, 428), "move_mount": (429, 429),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "userfaultfd": (323, 282), "bpf": (321, 280),
    "perf_event_open": (298, 241), "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "mknod": (133, None), "mknodat": (259, 33), "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265), "setpriority": (141, 140), "sched_setparam": (142, 118),
    "sched_setscheduler": (144, 119), "sched_setaffinity": (203, 122), "ioprio_set": (251, 30),
    "migrate_pages": (256, 238), "move_pages": (279, 239), "process_madvise": (440, 440),
    "process_mrelease": (448, 448),
}
_PROCESS_CALLS = ("fork", "vfork", "clone", "clone3")
# signals: allowed only to itself (kill also to its own group, 0: it leads a group of one)
_SELF_ONLY = {"kill": ((62, 129), True), "tkill": ((200, 130), False), "tgkill": ((234, 131), False)}
_PRLIMIT = (302, 261)
_ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}


def supported() -> bool:
    return platform.machine() in _ARCHES


def _program(arch: str, pid: int, allow_processes: bool) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k); jump targets 'A' (allow) and 'E' (EPERM) resolved here."""
    col, audit_arch = _ARCHES[arch]
    prog: list[tuple[int, object, object, int]] = [(_LD_ABS, 0, 0, 4), (_JEQ, 1, 0, audit_arch), (_RET, 0, 0, _KILL),
                                                   (_LD_ABS, 0, 0, 0)]
    if arch == "x86_64":
        prog.append((_JGE, "K", 0, 0x40000000))  # x32 ABI numbers
    for name, nrs in _CALLS.items():
        if nrs[col] is not None and not (allow_processes and name in _PROCESS_CALLS):
            prog.append((_JEQ, "E", 0, nrs[col]))
    for nrs, group in _SELF_ONLY.values():
        tail = [(_JEQ, "A", 0, 0)] if group else []
        block = [(_LD_ABS, 0, 0, _ARG0_HI), (_JEQ, 0, "E", 0), (_LD_ABS, 0, 0, _ARG0_LO), (_JEQ, "A", 0, pid), *tail,
                 (_RET, 0, 0, _ERRNO)]
        prog += [(_JEQ, 0, len(block), nrs[col]), *block]
    block = [(_LD_ABS, 0, 0, _ARG0_HI), (_JEQ, 0, "E", 0), (_LD_ABS, 0, 0, _ARG0_LO), (_JEQ, "A", "E", 0)]
    prog += [(_JEQ, 0, len(block), _PRLIMIT[col]), *block]
    prog += [(_RET, 0, 0, _ALLOW), (_RET, 0, 0, _ERRNO), (_RET, 0, 0, _KILL)]
    where = {"A": len(prog) - 3, "E": len(prog) - 2, "K": len(prog) - 1}
    out = []
    for i, (code, jt, jf, k) in enumerate(prog):
        jt = where[jt] - i - 1 if isinstance(jt, str) else jt
        jf = where[jf] - i - 1 if isinstance(jf, str) else jf
        assert 0 <= jt < 256 and 0 <= jf < 256, "seccomp jump out of range"  # noqa: S101 - a construction bug
        out.append((code, jt, jf, k))
    return out


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PID = 0x7FFFFFFE  # placeholder for the child's pid in a prebuilt filter (no real pid is this high)


def build(*, allow_processes: bool = False) -> tuple[bytearray, list[int]] | None:
    """The filter's bytes with a placeholder pid, and where it is (built once, in the zygote);
    None where unsupported."""
    arch = platform.machine()
    if arch not in _ARCHES:
        return None
    prog = _program(arch, _PID, allow_processes)
    code = bytearray(b"".join(struct.pack("=HBBI", *ins) for ins in prog))
    return code, [i * 8 + 4 for i, ins in enumerate(prog) if ins[3] == _PID]


def install(libc: ctypes.CDLL, pid: int, prebuilt: tuple[bytearray, list[int]] | None = None, *,
            allow_processes: bool = False) -> bool:
    """Install the filter on this process (no_new_privs must be set); False where unsupported."""
    built = prebuilt or build(allow_processes=allow_processes)
    if built is None:
        return False
    code, where = built
    for offset in where:
        struct.pack_into("=I", code, offset, pid)
    buf = (ctypes.c_char * len(code)).from_buffer(code)
    fprog = _Fprog(len(code) // 8, ctypes.addressof(buf))
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter: {errno.errorcode.get(err, err)}")
    return True
