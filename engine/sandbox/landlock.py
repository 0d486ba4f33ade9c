"""Landlock (Linux >= 5.13): kernel-enforced limits an unprivileged process puts on itself.

The child restricts itself, after its rlimits and before any program byte runs, to:
writes, creations, removals and renames only beneath its work directory (and writes to
``/dev/null``); no ``execve`` of anything; where the kernel's ABI has them, no TCP bind
or connect (ABI 4) and no signals to processes outside its own domain (ABI 6: it cannot
kill the template or the pool). Reads stay allowed. This is the layer that holds for a
non-root user, who has no uid to switch the program to.
"""

from __future__ import annotations

import ctypes
import os

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446  # the same numbers on x86_64 and aarch64
_VERSION_FLAG = 1
_PATH_BENEATH = 1
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REFER, TRUNCATE = 1 << 13, 1 << 14
_DIR_WRITES = sum(1 << b for b in range(4, 13))  # remove dir/file, make char/dir/reg/sock/fifo/block/sym
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1, 2

_libc = ctypes.CDLL(None, use_errno=True)
_ABI: list[int] = []
_libc.syscall.restype = ctypes.c_long


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is absent or disabled (asked once)."""
    if not _ABI:
        version = _libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_VERSION_FLAG))
        _ABI.append(max(0, int(version)))
    return _ABI[0]


def restrict(workdir: int | str) -> int:
    """Apply the rules to this process (no_new_privs must be set), writes allowed beneath the
    directory open as ``workdir`` (an fd: its path may be out of reach once the uid changed);
    the ABI used, 0 if none."""
    version = abi()
    if version < 1:
        return 0
    fs_writes = WRITE_FILE | _DIR_WRITES | (REFER if version >= 2 else 0) | (TRUNCATE if version >= 3 else 0)
    attr = _RulesetAttr(handled_access_fs=EXECUTE | fs_writes,
                        handled_access_net=(_NET_BIND_TCP | _NET_CONNECT_TCP) if version >= 4 else 0,
                        scoped=(_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if version >= 6 else 0)
    size = 8 if version < 4 else 16 if version < 6 else 24
    ruleset = _libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    try:
        for path, allowed in ((workdir, fs_writes), (os.devnull, WRITE_FILE | (TRUNCATE if version >= 3 else 0))):
            fd = os.dup(path) if isinstance(path, int) else os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneath(allowed_access=allowed, parent_fd=fd)
                if _libc.syscall(_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_PATH_BENEATH),
                                 ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}: {os.strerror(ctypes.get_errno())}")
            finally:
                os.close(fd)
        if _libc.syscall(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
            raise OSError(ctypes.get_errno(), f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)
    return version
