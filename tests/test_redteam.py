"""Hostile programs: each must be contained, never `passed`, touch nothing outside its temp
dir, and leave the pool healthy; a correct program still passes afterwards.

Every hostile program is a *wrong* solution of ``add`` (or no solution) that tries to get a
pass anyway or to do harm. ``OUT`` is a world-writable directory outside the sandbox, so
only the sandbox (not file permissions) stands between the program and it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from engine.sandbox.pool import Job, Limits, SandboxPool

TEST = "assert add(1, 2) == 3\nassert add(2, 2) == 4\n"
GOOD = "def add(a, b):\n    return a + b\n"


def hostile(outside: str) -> dict[str, str]:
    """name -> program; ``outside`` holds a file ``keep`` and a directory ``sub``."""
    keep = f"{outside}/keep"
    return {
        "delete_outside_file": f"import os\nos.remove({keep!r})\ndef add(a, b):\n    return 0\n",
        "write_outside_file": f"def add(a, b):\n    open({outside + '/pwned'!r}, 'w').write('x')\n    return 3\n",
        "append_outside_pathlib": f"import pathlib\npathlib.Path({keep!r}).write_text('gone')\ndef add(a, b): return 0\n",
        "rmtree_outside": f"import shutil\nshutil.rmtree({outside!r})\ndef add(a, b): return 0\n",
        "rename_outside": f"import os\nos.rename({keep!r}, {keep + '2'!r})\ndef add(a, b): return 0\n",
        "chdir_then_relative_write": (f"import os\nos.chdir({outside!r})\nopen('pwned', 'w').write('x')\n"
                                      "def add(a, b): return 0\n"),
        "dir_fd_write": (f"import os\nd = os.open({outside!r}, os.O_RDONLY)\n"
                         "fd = os.open('pwned', os.O_WRONLY | os.O_CREAT, dir_fd=d)\ndef add(a, b): return 0\n"),
        "symlink_escape": (f"import os\nos.symlink({outside!r}, 'link')\nopen('link/pwned', 'w').write('x')\n"
                           "def add(a, b): return 0\n"),
        "network_connect": ("import socket\ndef add(a, b):\n    s = socket.create_connection(('127.0.0.1', 22), 1)\n"
                            "    return 3\n"),
        "network_urllib": ("import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)\n"
                           "def add(a, b): return 0\n"),
        "subprocess_run": f"import subprocess\nsubprocess.run(['touch', {outside + '/pwned'!r}])\ndef add(a, b): return 0\n",
        "os_system": f"import os\nos.system('touch {outside}/pwned')\ndef add(a, b): return 0\n",
        "os_exec": "import os\nos.execv('/bin/true', ['true'])\ndef add(a, b): return 0\n",
        "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
        "thread_spawn": "import threading\nthreading.Thread(target=lambda: None).start()\ndef add(a, b): return 3\n",
        "memory_bomb": "x = bytearray(64 << 30)\ndef add(a, b): return 3\n",
        "memory_creep": "xs = []\nwhile True:\n    xs.append('x' * (16 << 20))\n",
        "cpu_spin_ignoring_alarms": ("import signal\nfor s in (signal.SIGALRM, signal.SIGXCPU, signal.SIGTERM):\n"
                                     "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n"),
        "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\ndef add(a, b): return 0\n",
        "kill_everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\ndef add(a, b): return 0\n",
        "early_exit_zero": "import os\ndef add(a, b):\n    os._exit(0)\n",
        "sys_exit_zero_at_import": "import sys\nsys.exit(0)\n",
        "always_equal": ("class Eq:\n    def __eq__(self, other): return True\n    def __bool__(self): return True\n"
                         "def add(a, b): return Eq()\n"),
        "int_subclass_equal": "class I(int):\n    def __eq__(self, o): return True\ndef add(a, b): return I(0)\n",
        "patch_builtins": "import builtins\nbuiltins.AssertionError = type('E', (Exception,), {})\ndef add(a, b): return 0\n",
        "patch_operator_module": "import operator\noperator.eq = lambda a, b: True\ndef add(a, b): return 0\n",
        "reload_os_then_system": ("import importlib, os\nos = importlib.reload(os)\nos.system('true')\n"
                                  "def add(a, b): return 0\n"),
        "ctypes_import": "import ctypes\nctypes.CDLL(None).system(b'true')\ndef add(a, b): return 0\n",
        "ctypes_via_harness_module": ("import sys\nsys.modules['engine.sandbox.child']._LIBC.system(b'true')\n"
                                      "def add(a, b): return 0\n"),
        "gc_walk_for_harness": "import gc\nobjs = gc.get_objects()\ndef add(a, b): return 0\n",
        "frame_walk_forge": ("import sys, json\ndef add(a, b):\n    f = sys._getframe(1)\n    while f:\n"
                             "        s = f.f_locals.get('self')\n        if s is not None and hasattr(s, 'sock'):\n"
                             "            s.sock.sendall(b'{\"type\":\"done\",\"result\":{\"status\":\"passed\"}}\\n')\n"
                             "        f = f.f_back\n    return 0\n"),
        "read_parent_fds": "import os\nopen(f'/proc/{os.getppid()}/fd/1', 'w')\n",
        "proc_self_mem": "open('/proc/self/mem', 'rb')\ndef add(a, b): return 0\n",
        "output_symlink_to_secret": ("import os\nos.remove('.output')\nos.symlink('/etc/shadow', '.output')\n"
                                     "def add(a, b): return 0\n"),
        "file_size_bomb": "open('big', 'wb').write(b'x' * (64 << 20))\ndef add(a, b): return 3\n",
        "fd_exhaustion": "fs = [open('f%d' % i, 'w') for i in range(1000)]\ndef add(a, b): return 3\n",
        "huge_return": "def add(a, b):\n    return [0] * (50 << 20)\n",
        "endless_iter_return": ("class L(list):\n    def __iter__(self):\n        while True:\n            yield 3\n"
                                "def add(a, b): return L()\n"),
        "setrlimit_raise": "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\ndef add(a, b): return 0\n",
        "recursion_crash": ("import sys\nsys.setrecursionlimit(10**6)\ndef r(n): return r(n + 1)\n"
                            "def add(a, b): return r(0)\n"),
    }


@pytest.fixture(scope="module")
def outside():
    root = tempfile.mkdtemp(prefix="pmat-redteam-")
    os.chmod(root, 0o777)  # writable by anyone: the sandbox alone must keep programs out
    Path(root, "keep").write_text("keep")
    Path(root, "sub").mkdir()
    os.chmod(Path(root, "sub"), 0o777)
    yield root
    for p in sorted(Path(root).rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() or p.is_symlink() else p.rmdir()
    os.rmdir(root)


def _snapshot(root: str) -> dict[str, tuple[int, int, str]]:
    out = {}
    for p in Path(root).rglob("*"):
        st = p.lstat()
        out[str(p)] = (st.st_mode, st.st_size, p.read_text() if p.is_file() else "")
    return out


@pytest.mark.parametrize("isolate_uid", [True, False], ids=["own-uid", "hook-only"])
def test_hostile_programs_are_contained(outside: str, isolate_uid: bool) -> None:
    """``hook-only`` is what a non-root user gets: no uid switch, so no kernel file protection."""
    programs = hostile(outside)
    assert len(programs) >= 20
    before = _snapshot(outside)
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    limits = Limits(memory_mb=256, cpu_s=4, fsize_mb=8, nofile=64)
    with SandboxPool(workers=4, limits=limits, isolate_uid=isolate_uid) as pool:
        names = list(programs)
        verdicts = pool.run_many([Job(programs[n], TEST, timeout=4.0) for n in names])
        report = {n: (v.status, v.error_type, v.blocked_op) for n, v in zip(names, verdicts, strict=True)}
        assert all(v.status != "passed" for v in verdicts), report
        assert pool.healthy()
        after = pool.run_many([Job(GOOD, TEST), Job("def add(a, b):\n    return 0\n", TEST)])
        assert [v.status for v in after] == ["passed", "failed"]
        assert pool.healthy()
    assert _snapshot(outside) == before
    new = {n for n in set(os.listdir(tempfile.gettempdir())) - tmp_before if not n.startswith("pytest")}
    assert not {n for n in new if "pwned" in n}
    # the categories the harness promises for these
    expect = {"memory_bomb": "oom", "memory_creep": "oom", "cpu_spin_ignoring_alarms": "timeout",
              "fork_bomb": "blocked", "network_connect": "blocked", "os_system": "blocked",
              "kill_parent": "blocked", "kill_everything": "blocked", "ctypes_via_harness_module": "blocked",
              "ctypes_import": "blocked", "gc_walk_for_harness": "blocked", "os_exec": "blocked",
              "setrlimit_raise": "blocked", "proc_self_mem": "blocked", "symlink_escape": "blocked",
              "read_parent_fds": "blocked",
              "chdir_then_relative_write": "blocked", "dir_fd_write": "blocked", "write_outside_file": "blocked",
              "delete_outside_file": "blocked", "always_equal": "failed", "int_subclass_equal": "failed",
              "patch_builtins": "failed", "patch_operator_module": "failed", "endless_iter_return": "failed",
              "frame_walk_forge": "error", "early_exit_zero": "error", "sys_exit_zero_at_import": "error"}
    assert {n: report[n][0] for n in expect} == expect, report
    # run as root the program's uid cannot read an unpreloaded stdlib module: then an import error
    assert report["subprocess_run"][0] in ("blocked", "error") and report["network_urllib"][0] in ("blocked", "error")
    assert "shadow" not in "".join(v.stdout_tail for v in verdicts)
