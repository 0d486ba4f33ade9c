"""The child's audit hook: the layer that names a forbidden operation (and the last one where
neither Landlock nor an own uid is there).

Built so that the program cannot change what it checks: every table and every function it
uses is captured in its closure when it is armed (patching ``os``, ``posixpath``,
``builtins`` or this module changes nothing), paths are resolved by its own code from the
``posix`` primitives, only exact ``str``/``bytes`` (or an unpatched ``pathlib`` path) count as
paths, and any error inside it is a violation, so it never raises a traceback that would
hand its frames out. Relative paths are checked against the cwd, which the program cannot
move away from its directory; with symbolic links refused, a ``dir_fd`` (only ever of a
directory inside, since opening one outside is refused) cannot reach further than the cwd.

Rules: processes, signals, sockets, ctypes, tracing and profiling hooks, frames of other
threads and the garbage collector's object lists are refused outright; writes, removals,
renames, links and directory opens only beneath the work directory; reads and listings only
there, in the interpreter's standard library, the preloaded packages and system libraries
(not site-packages as a whole: datasets ship in packages).
"""

from __future__ import annotations

import os
import pathlib
import posix
import sys
import sysconfig
from typing import Any

PROC_EVENTS = frozenset({
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
    "os.kill", "os.killpg", "signal.pthread_kill", "resource.setrlimit", "resource.prlimit",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "webbrowser.open", "urllib.Request",
    "sys._current_frames", "sys._current_exceptions", "os.setxattr", "os.removexattr", "os.chroot", "os.mknod",
    "os.mkfifo", "os.symlink", "sys.settrace", "sys.setprofile", "sys.addaudithook", "os.add_dll_directory",
    "pty.spawn", "sys.remote_exec", "os.unshare", "os.setns",
})
# event -> indices of arguments that must resolve beneath the work directory
PATH_EVENTS = {
    "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.link": (0, 1), "os.truncate": (0,),
    "os.chmod": (0,), "os.chown": (0,), "os.mkdir": (0,), "os.utime": (0,), "os.chflags": (0,),
    "os.lchflags": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,),
    "shutil.move": (0, 1), "shutil.chown": (0,), "shutil.make_archive": (0,), "shutil.unpack_archive": (1,),
}
BLOCKED_IMPORTS = frozenset({"ctypes", "_ctypes", "cffi", "_posixsubprocess", "_xxsubinterpreters", "_testcapi",
                             "_testinternalcapi", "_xxinterpchannels"})
# C modules that open files (or sockets) without an audited Python open: refused where no kernel
# layer confines writes (sqlite's ATTACH, dbm files, readline's history, POSIX semaphores...)
UNAUDITED_FILE_IMPORTS = frozenset({"_sqlite3", "_dbm", "_gdbm", "readline", "syslog", "_multiprocessing",
                                    "_posixshmem", "ossaudiodev", "_curses", "_tkinter"})
_FILES = frozenset({"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/etc/localtime"})
_SYSTEM_READS = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/share/zoneinfo")
_PACKAGES = ("numpy",)


def read_roots() -> tuple[tuple[str, ...], tuple[str, ...], frozenset[str]]:
    """(directories a program may read beneath, package directories inside site-packages it
    may read, directories it may list: the import path), resolved once in the zygote."""
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib") if k in paths} | set(_SYSTEM_READS)
    roots |= {p for p in sys.path if p.endswith("lib-dynload")}
    roots.add(os.path.dirname(os.path.abspath(__file__)))  # the harness's own source, for tracebacks
    packages = set()
    for name in _PACKAGES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            pkg = os.path.dirname(os.path.realpath(module.__file__))
            packages |= {pkg, pkg + ".libs"}
    listable = frozenset(os.path.realpath(p) for p in sys.path if p and os.path.isdir(p))
    return tuple(sorted(os.path.realpath(r) for r in roots)), tuple(sorted(packages)), listable


def install(viol_fd: int, root: str, roots: tuple[str, ...], packages: tuple[str, ...],
            listable: frozenset[str], *, kernel_refuses_processes: bool = False,
            kernel_confines_writes: bool = False) -> None:
    """Arm the permanent hook: a forbidden operation is named on the pipe, then the process exits.
    With ``kernel_refuses_processes`` (seccomp) ``subprocess`` may be imported: using it fails;
    without ``kernel_confines_writes`` (Landlock) C modules that write files unaudited may not."""
    exit_now, write, lstat, readlink, getcwd = posix._exit, posix.write, posix.lstat, posix.readlink, posix.getcwd
    t_type, t_str, t_bytes, t_int, t_len, t_any = type, str, bytes, int, len, any
    t_issubclass, t_base = issubclass, BaseException
    proc_events, path_events = PROC_EVENTS, dict(PATH_EVENTS)
    blocked = BLOCKED_IMPORTS - {"_posixsubprocess"} if kernel_refuses_processes else BLOCKED_IMPORTS
    if not kernel_confines_writes:
        blocked |= UNAUDITED_FILE_IMPORTS
    files, roots, packages = _FILES, tuple(r + "/" for r in roots), tuple(p + "/" for p in packages)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    path_types = (pathlib.PurePosixPath, pathlib.PosixPath)
    orig_fspath, orig_str = pathlib.PurePath.__fspath__, pathlib.PurePath.__str__
    prefix = root + "/"
    listable = frozenset(p for p in listable if not prefix.startswith(p.rstrip("/") + "/"))  # not its parents

    def violate(what: str) -> None:
        try:
            write(viol_fd, what.encode("utf-8", "replace")[:400] + b"\n")
        finally:
            exit_now(86)

    def text_of(path: Any) -> str | None:
        kind = t_type(path)
        if kind is t_str:
            return path
        if t_issubclass(kind, t_str):
            return t_str.__str__(path)
        if t_issubclass(kind, t_bytes):
            return t_bytes.decode(path, "utf-8", "surrogateescape")
        if kind in path_types and kind.__fspath__ is orig_fspath and kind.__str__ is orig_str:
            return t_str.__str__(orig_str(path))  # cached on the path: the open that follows sees the same
        return None

    def resolve(text: str) -> str | None:
        """The absolute path with every symbolic link resolved (None: not resolvable)."""
        if "\x00" in text:
            return None
        pending = (text if text.startswith("/") else getcwd() + "/" + text).split("/")[::-1]
        done: list[str] = []
        links = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/" + "/".join([*done, part])
            try:
                mode = lstat(candidate).st_mode
            except OSError:
                done.append(part)
                continue
            if mode & 0o170000 == 0o120000:
                links += 1
                if links > 40:
                    return None
                target = readlink(candidate)
                if target.startswith("/"):
                    done = []
                pending.extend(target.split("/")[::-1])
            else:
                done.append(part)
        return "/" + "/".join(done)

    def inside(path: str) -> bool:
        return path == root or path.startswith(prefix)

    def readable(path: str) -> bool:
        if inside(path) or path in files:
            return True
        path += "/"
        if path.startswith(packages):
            return True
        return path.startswith(roots) and "/site-packages/" not in path and "/dist-packages/" not in path

    def checked(path: Any, what: str) -> str:
        text = text_of(path)
        resolved = resolve(text) if text is not None else None
        if resolved is None:
            violate(f"{what} of a path that cannot be checked ({t_type(path).__name__})")
        return resolved

    def is_dir(path: str) -> bool:
        try:
            return lstat(path).st_mode & 0o170000 == 0o040000
        except OSError:
            return False

    def check(event: str, args: tuple) -> None:
        if event in proc_events or event.startswith(("ctypes.", "socket.")):
            violate(event)
        elif event == "open":
            path, mode, flags = args[0], args[1], args[2]
            if t_type(path) is t_int:
                return
            p = checked(path, "open")
            writing = (t_issubclass(t_type(mode), t_str) and t_any(c in t_str.__str__(mode) for c in "wax+")) or (
                t_type(flags) is t_int and flags & write_flags)
            if writing and not inside(p) and p != "/dev/null":
                violate(f"open for writing {p}")
            if not readable(p):
                violate(f"open for reading {p}")
            if not inside(p) and is_dir(p):  # a dir_fd outside would let *at() calls reach it
                violate(f"open directory {p}")
        elif event in path_events:
            for i in path_events[event]:
                if i < t_len(args) and args[i] is not None and t_type(args[i]) is not t_int:
                    p = checked(args[i], event)
                    if not inside(p):
                        violate(f"{event} {p}")
        elif event in ("os.listdir", "os.scandir"):
            if args and args[0] is not None and t_type(args[0]) is not t_int:
                p = checked(args[0], event)
                if not readable(p) and p not in listable:
                    violate(f"{event} {p}")
        elif event == "os.chdir":  # the cwd stays the work directory: relative paths mean one thing
            if t_type(args[0]) is t_int or checked(args[0], event) != root:
                violate("os.chdir away from the work directory")
        elif event == "import":
            name = args[0]
            if t_type(name) is not t_str or name.split(".")[0] in blocked:
                violate(f"import {name}"[:200] if t_type(name) is t_str else "import of a non-str name")
            if t_len(args) > 1 and args[1] is not None:  # native code loaded from a file
                p = checked(args[1], "import")
                if inside(p) or not readable(p):
                    violate(f"import of native code from {p}")

    def hook(event: str, args: tuple) -> None:
        try:
            check(event, args)
        except t_base:  # noqa: BLE001 - a hook that raised would hand its frames to the program
            violate(f"{event}: check failed")

    sys.addaudithook(hook)


def blocked_loaded() -> list[str]:
    """Loaded modules the program must not get from ``sys.modules`` (a cached module never
    raises the ``import`` event again)."""
    return [n for n in sys.modules if n.split(".")[0] in BLOCKED_IMPORTS]

