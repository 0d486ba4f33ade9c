"""The sandbox's verdict categories, its value channel, the pool, and `pmat sandbox`."""

from __future__ import annotations

import ctypes
import decimal
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.sandbox import landlock
from engine.sandbox.literal import Unsupported, split
from engine.sandbox.pool import Job, Limits, SandboxPool
from engine.sandbox.slot import verdict_from

ADD = "def add(a, b):\n    return a + b\n"
TEST = "assert add(1, 2) == 3\n"


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, limits=Limits(memory_mb=512, cpu_s=10)) as p:
        yield p


def run(pool: SandboxPool, program: str, tests: str = TEST, **kw):
    return pool.run(Job(program=program, runner_code=tests, timeout=kw.pop("timeout", 5.0), **kw))


@pytest.mark.parametrize(("program", "status", "error_type"), [
    (ADD, "passed", None),
    ("def add(a, b):\n    return a - b\n", "failed", "AssertionError"),
    ("def add(a, b)\n    return a + b\n", "syntax_error", "SyntaxError"),
    ("def add(a, b):\n    return a / 0\n", "error", "ZeroDivisionError"),
    ("def add(a, b):\n    return undefined_name\n", "error", "NameError"),
    ("import nonexistent_module_xyz\n" + ADD, "error", "ModuleNotFoundError"),
    ("def add(a, b):\n    while True:\n        pass\n", "timeout", None),
    ("import time\ndef add(a, b):\n    time.sleep(60)\n", "timeout", None),
    ("def add(a, b):\n    return len(bytearray(4 << 30))\n", "oom", "MemoryError"),
    ("import socket\ndef add(a, b):\n    socket.socket()\n    return 3\n", "blocked", None),
    ("def add(a, b):\n    raise SystemExit(0)\n", "error", "SystemExit"),
])
def test_categories(pool: SandboxPool, program: str, status: str, error_type: str | None) -> None:
    v = run(pool, program, timeout=2.0)
    assert v.status == status, v
    assert v.error_type == error_type


def test_blocked_names_the_operation(pool: SandboxPool) -> None:
    v = run(pool, "import os\ndef add(a, b):\n    os.system('true')\n    return 3\n")
    assert v.status == "blocked" and v.blocked_op == "os.system"


def test_ordinary_file_use_inside_the_work_dir(pool: SandboxPool) -> None:
    """What correct programs do with files must not be 'blocked': /dev/null, temp files, pathlib."""
    program = ("import os, sys, tempfile, pathlib\nsys.stdout = open(os.devnull, 'w')\n"
               "def add(a, b):\n    with tempfile.NamedTemporaryFile('w+') as f:\n        f.write(str(a + b))\n"
               "        f.seek(0)\n        v = int(f.read())\n    pathlib.Path('x.txt').write_text('y')\n"
               "    os.makedirs('d/e', exist_ok=True)\n    os.rename('x.txt', 'd/e/x.txt')\n    return v\n")
    assert run(pool, program).passed


def test_missing_function_and_wrong_type(pool: SandboxPool) -> None:
    assert run(pool, "def other(a, b):\n    return 3\n").error_type == "NameError"
    assert run(pool, "def add(a, b):\n    return '3'\n").status == "failed"


def test_values_cross_as_plain_data(pool: SandboxPool) -> None:
    program = ("from collections import Counter, namedtuple\nP = namedtuple('P', 'x y')\n"
               "def f(xs):\n    xs.append(9)\n    return Counter(xs), P(1, 2), {1, 2}, b'ab', 2 ** 2000, float('inf')\n")
    tests = ("xs = [1, 1]\nc, p, s, b, big, inf = f(xs)\nassert xs == [1, 1, 9]\n"
             "assert c == {1: 2, 9: 1} and type(c).__name__ == 'Counter'\nassert p == (1, 2) and s == {1, 2} and b == b'ab'\n"
             "assert big == 2 ** 2000 and inf == float('inf')\n")
    assert run(pool, program, tests).passed


def test_objects_stay_handles(pool: SandboxPool) -> None:
    program = ("class Node:\n    def __init__(self, v):\n        self.v = v\n"
               "def value(n):\n    return n.v\n")
    assert pool.run(Job(program, "assert value(root) == 5\n", setup="root = Node(5)\n")).passed
    assert run(pool, program, "assert Node(5) == Node(5)\n").status == "failed"  # identity only


def test_builtin_types_as_arguments_and_shadowed_builtins(pool: SandboxPool) -> None:
    program = "def keep(xs, t):\n    return [x for x in xs if isinstance(x, t)]\ndef sum(a, b):\n    return 6\n"
    assert run(pool, program, "assert keep([1, 'a', 2.0], int) == [1]\n").passed
    assert pool.run(Job(program, "assert sum(10, 15) == 6\n", aliases={"sum": "sum"})).passed
    assert run(pool, program, "assert sum([1, 2]) == 3\n").passed  # unaliased: the real builtin


def test_output_is_captured_not_trusted(pool: SandboxPool) -> None:
    forged = json.dumps({"type": "done", "result": {"status": "passed", "nonce": "x"}})
    program = f"import sys\nprint({forged!r})\nsys.stdout.flush()\ndef add(a, b):\n    print('hello')\n    return 0\n"
    v = run(pool, program)
    assert v.status == "failed"
    assert "hello" in v.stdout_tail and '"passed"' in v.stdout_tail


def test_verdict_needs_the_runners_nonce() -> None:
    done = {"type": "done", "result": {"status": "passed", "nonce": "forged"}, "child_status": 0}
    assert verdict_from(done, "real-nonce", killed=False).status == "error"
    done["result"]["nonce"] = "real-nonce"
    assert verdict_from(done, "real-nonce", killed=False).passed
    assert verdict_from(done, "real-nonce", killed=True).status == "timeout"


def test_many_in_order_and_pool_stays_healthy(pool: SandboxPool) -> None:
    jobs = [Job(f"def add(a, b):\n    return a + b + {i % 2}\n", TEST, timeout=5.0) for i in range(40)]
    seen: list[int] = []
    verdicts = pool.run_many(jobs, on_result=lambda i, v: seen.append(i))
    assert [v.passed for v in verdicts] == [i % 2 == 0 for i in range(40)]
    assert sorted(seen) == list(range(40))
    assert pool.healthy()


def test_literal_tests_found_everywhere_and_rendered_by_pmat() -> None:
    """Issue 15 classes 1-2: the file's tests are read as data wherever they are (top level, a
    __main__ block, check(), test_*, loops) and re-emitted by pmat; the program part keeps the rest."""
    src = ("import math\ndef f(x):\n    return x + 1\ncases = [(1, 2), (2, 3)]\nassert f(1) == 2\n"
           "for a, b in cases:\n    assert f(a) == b, 'msg'\n"
           "def check(candidate):\n    assert math.isclose(candidate(0.5), 1.5)\n"
           "    for i in range(3):\n        assert candidate(i) - 1 == i\ncheck(f)\n"
           "if __name__ == '__main__':\n    y = f(5)\n    assert sorted([y, 1]) == [1, 6]\n    print('ok')\n"
           "def test_x():\n    assert not f(-1)\n")
    program, tests, aliases = split(src)
    assert "assert" not in program and "def f" in program and "cases" in program
    assert tests.count("assert") == 1 + 2 + 1 + 3 + 1 + 1 and "print" not in tests and aliases == {}
    _, tests, aliases = split("def sum(a, b):\n    return a + b\nassert sum(1, 2) == 3\n")
    assert aliases == {"sum": "sum"}  # the program's own sum, as in-process


@pytest.mark.parametrize("hostile", [
    "assert f() == __import__('os').system('touch /tmp/pmat-pwned')\n",
    "assert eval('1')\n",
    "def exec(s):\n    return 1\nassert exec('import os') == 1 and open('/etc/passwd')\n",
    "import sys\nassert sys._getframe(0).f_back\n",
    "if __name__ == '__main__':\n    import os\n    os.system('true')\n",
    "while True:\n    assert f()\n",
    "def check(c):\n    assert c(1) == [0] * 10\ncheck(f)\n",
    "assert f(1) == 2\nfor i in f(3):\n    assert i\n",
    "assert f() == 1\nfor i in range(10 ** 12):\n    assert f() == i\n",
])
def test_tests_outside_the_literal_shape_are_refused(hostile: str) -> None:
    with pytest.raises(Unsupported, match="line|no tests|more than"):
        split("def f(x=0):\n    return x\n" + hostile)


def test_cli_refuses_hostile_tests_without_running_them(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    prog = tmp_path / "p.py"
    prog.write_text(f"def f():\n    return 0\nif __name__ == '__main__':\n    import os\n"
                    f"    assert f() == os.system('touch {marker}')\n")
    out = subprocess.run([sys.executable, "-m", "engine.cli.main", "sandbox", str(prog)], capture_output=True,
                         text=True, timeout=60)
    verdict = json.loads(out.stdout)
    assert out.returncode == 1 and verdict["status"] == "error" and verdict["error_type"] == "UnsupportedTest"
    assert "p.py: line 5" in verdict["detail"] and not marker.exists()


def test_cli_prints_verdict_json(tmp_path: Path) -> None:
    prog = tmp_path / "p.py"
    prog.write_text(ADD + "\nassert add(2, 2) == 4\n")
    out = subprocess.run([sys.executable, "-m", "engine.cli.main", "sandbox", str(prog)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "passed"
    prog.write_text(ADD + "\nassert add(2, 2) == 5\n")
    out = subprocess.run([sys.executable, "-m", "engine.cli.main", "sandbox", str(prog)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and json.loads(out.stdout)["status"] == "failed"
    missing = subprocess.run([sys.executable, "-m", "engine.cli.main", "sandbox", str(tmp_path / "no.py")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no.py" in missing.stderr


def test_tests_that_spin_on_the_trusted_side_are_timed_out(pool: SandboxPool) -> None:
    """The program answers at once but the tests loop on its answer: the manager kills the
    template running them, restarts it, and the next check runs normally."""
    v = run(pool, "def f():\n    return 1\n", "x = f()\nwhile x:\n    pass\n", timeout=1.0)
    assert v.status == "timeout"
    assert pool.healthy() and run(pool, ADD).passed


def test_lazy_iterables_iterate_but_do_not_equal_lists(pool: SandboxPool) -> None:
    program = ("def evens(n):\n    return (i for i in range(n) if i % 2 == 0)\n"
               "def doubled(xs):\n    return map(lambda x: 2 * x, xs)\n"
               "def keys(d):\n    return d.keys()\n")
    assert run(pool, program, "assert list(evens(5)) == [0, 2, 4]\nassert sorted(doubled([2, 1])) == [2, 4]\n"
                              "assert list(doubled(evens(3))) == [0, 4]\nassert keys({1: 2}) == {1}\n").passed
    assert run(pool, program, "assert doubled([1]) == [2]\n").status == "failed"  # a map is not a list


@pytest.mark.skipif(landlock.abi() < 1, reason="kernel without Landlock")
def test_landlock_layer_alone(tmp_path: Path) -> None:
    """The kernel layer under the audit hook: a process restricted to ``inside`` can write
    there and nowhere else, cannot exec, and (ABI >= 6) cannot signal its parent."""
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)
        results = [landlock.restrict(str(inside)) > 0]
        for attempt in (lambda: (inside / "a").write_text("x"), lambda: (outside / "a").write_text("x"),
                        lambda: os.execv("/bin/true", ["true"]), lambda: os.kill(os.getppid(), 0)):
            try:
                attempt()
                results.append(True)
            except OSError:
                results.append(False)
        os.write(w, json.dumps(results).encode())
        os._exit(0)
    os.close(w)
    results = json.loads(os.read(r, 1000))
    os.waitpid(pid, 0)
    applied, wrote_inside, wrote_outside, executed, signalled = results
    assert applied and wrote_inside and not wrote_outside and not executed
    assert not signalled or landlock.abi() < 6
    assert list(outside.iterdir()) == []


def test_remote_stop_iteration_cannot_end_a_test_early(pool: SandboxPool) -> None:
    program = "def ok(x):\n    raise StopIteration\n"
    v = run(pool, program, "assert all(map(ok, [1, 2, 3]))\n")
    assert v.status == "error" and v.error_type == "StopIteration"


def test_free_names_are_what_no_scope_binds() -> None:
    from engine.sandbox.runner import free_names

    code = ("import math as m, os.path\nfrom x import y\n"
            "def check(candidate, *rest, k=default):\n    total = helper(candidate(1))\n"
            "    try:\n        pass\n    except Error as err:\n        print(err, m, y)\n"
            "    return [z for z in zs] + sorted(total, key=lambda q: q + outer)\n"
            "class C(Base):\n    attr = value\ncheck(add)\n")
    assert free_names(code) == {"default", "helper", "Error", "zs", "outer", "Base", "value", "add"}


def test_queue_and_threading_import_from_memory(pool: SandboxPool) -> None:
    """Not preloaded (threading's at-fork handler would cost every child), still importable
    by a program running under its own uid."""
    program = ("import queue, threading\ndef add(a, b):\n    q = queue.PriorityQueue()\n    q.put(b)\n"
               "    q.put(a)\n    with threading.Lock():\n        return q.get() + q.get()\n")
    assert run(pool, program).passed


def test_children_are_forked_by_the_zygote_not_the_template(pool: SandboxPool) -> None:
    """The program's parent is the zygote, forked from the template before it read any job,
    so no earlier check's tests can be in the program's memory."""
    templates = sorted(s.proc.pid for s in pool.slots)
    program = "import os\ndef parent():\n    return os.getppid()\n"
    assert run(pool, program, f"assert parent() > 1 and parent() not in {templates}\n").passed


def test_a_killed_owners_work_dir_is_swept_by_the_next_pool(tmp_path: Path) -> None:
    """kill -9 of a process holding a pool leaves its work dir; the next pool removes it, and
    never a live owner's."""
    import signal
    import tempfile

    from engine.sandbox.pool import sweep_orphans

    owner = subprocess.Popen(
        [sys.executable, "-c", "from engine.sandbox.pool import SandboxPool\n"
         "p = SandboxPool(workers=1, outer='none')\nprint(p.base, flush=True)\nimport time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    base = Path(owner.stdout.readline().strip())
    assert base.is_dir() and base.name.startswith(f"pmat-sandbox-{owner.pid}-")
    live = Path(tempfile.mkdtemp(prefix=f"pmat-sandbox-{os.getpid()}-"))
    try:
        assert base.name not in sweep_orphans()  # its owner is alive
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        hostile = base / "run-x"  # what a killed pool's program may have left: deep, unwritable
        deep = os.open(str(base), os.O_RDONLY)
        for _ in range(3000):
            os.mkdir("d", dir_fd=deep)
            nxt = os.open("d", os.O_RDONLY, dir_fd=deep)
            os.close(deep)
            deep = nxt
        os.close(deep)
        os.mkdir(hostile)
        (hostile / "f").write_text("x")
        os.chmod(hostile, 0)
        with SandboxPool(workers=1, outer="none"):
            pass
        assert not base.exists() and live.is_dir()
    finally:
        owner.kill()
        live.rmdir()


def test_values_are_materialised_with_in_process_truthiness_and_equality(pool: SandboxPool) -> None:
    """Issue 15 class 3: a falsy value must stay falsy on the trusted side (`assert f(x)`)."""
    program = ("from collections import deque, Counter, OrderedDict, namedtuple, defaultdict\n"
               "P = namedtuple('P', 'x y')\nclass No:\n    def __bool__(self):\n        return False\n"
               "def empty_range():\n    return range(0)\ndef keys():\n    return {}.keys()\n"
               "def empty_deque():\n    return deque()\ndef no():\n    return No()\n"
               "def values():\n    return {1: 2}.values()\ndef gen():\n    return (i for i in [])\n")
    for call in ("empty_range()", "keys()", "empty_deque()", "no()"):
        assert run(pool, program, f"assert {call}\n").status in ("failed", "error"), call
    tests = ("assert range(1, 5, 2) == __import__('builtins').range(1, 5, 2) and not empty_range()\n"
             "assert keys() == set() and type(keys()) is type({}.keys())\n"
             "assert list(values()) == [2] and values() != [2]\n"
             "assert gen() != [] and list(gen()) == [] and bool(gen())\n")
    assert run(pool, program, tests).passed
    program += ("def many():\n    d = defaultdict(list)\n    d[1].append(2)\n"
                "    return Counter('aab'), OrderedDict(a=1), d, P(1, 2), deque([1], maxlen=3), bytearray(b'x')\n")
    tests = ("import collections\nc, od, dd, p, dq, ba = many()\n"
             "assert type(c) is collections.Counter and c == {'a': 2, 'b': 1}\n"
             "assert type(od) is collections.OrderedDict and type(dd) is collections.defaultdict and dd[1] == [2]\n"
             "assert p == (1, 2) and p.x == 1 and p._fields == ('x', 'y')\n"
             "assert dq == collections.deque([1]) and dq.maxlen == 3 and type(ba) is bytearray\n")
    assert run(pool, program, tests).passed


def test_numpy_and_stdlib_import_in_the_child(pool: SandboxPool) -> None:
    mods = ("heapq bisect functools itertools collections math re string statistics fractions decimal "
            "datetime hashlib random operator copy typing array cmath json textwrap unicodedata calendar "
            "difflib queue sys time numbers struct zlib base64 binascii enum dataclasses abc contextlib io "
            "keyword pprint types weakref").split()
    program = f"import {', '.join(mods)}\nimport numpy as np\n" + (
        "def f(n):\n    return np.arange(n).sum(), np.array([1.5, 2.0]), math.comb(n, 2)\n")
    tests = ("import numpy\ns, a, c = f(4)\nassert s == 6 and type(s) is numpy.int64 and c == 6\n"
             "assert a.dtype == numpy.float64 and numpy.allclose(a, [1.5, 2.0])\n")
    v = run(pool, program, tests)
    assert v.passed, v


def test_per_call_deadline(pool: SandboxPool) -> None:
    """`__pmat_deadline__(s)` bounds each call inside it, tighter than the job's timeout."""
    program = "import time\ndef f(t):\n    time.sleep(t)\n    return t\n"
    fast = "with __pmat_deadline__(2.0):\n    assert f(0.01) == 0.01\n"
    assert run(pool, program, fast).passed
    slow = ("try:\n    with __pmat_deadline__(0.3):\n        f(3)\nexcept BaseException:\n    pass\n")
    v = run(pool, program, slow, timeout=5.0)
    assert v.status == "timeout" and v.wall_s < 2.0, v
    assert run(pool, "def __pmat_deadline__(s):\n    return 1\n" + program, fast).passed  # not the program's


def test_isolation_layers_are_reported_and_missing_ones_named(pool: SandboxPool) -> None:
    from engine.sandbox import check_line, isolation_layers
    from engine.sandbox.isolation import missing_layers

    info = pool.isolation()
    assert "audit-hook" in info["layers"] and info["missing"] == missing_layers(info["layers"])
    assert run(pool, ADD).isolation == info["layers"]
    host = isolation_layers()
    assert (check_line() is None) == (host["missing"] == [])
    assert any("bubblewrap" in m for m in missing_layers(["net-ns", "landlock-abi-7", "seccomp"]))


def test_private_tmpdir_still_runs_programs(tmp_path: Path) -> None:
    """Issue 15 class 8: a 0700 TMPDIR must not turn every program into EarlyExit."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    code = ("import tempfile, json\nfrom engine.sandbox.pool import Job, SandboxPool\n"
            f"assert tempfile.gettempdir() == {str(private)!r}\n"
            "for outer in ('auto', 'none'):\n    with SandboxPool(workers=1, outer=outer) as p:\n"
            "        print(p.run(Job('def add(a, b):\\n    return a + b\\n', 'assert add(1, 2) == 3\\n')).status)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TMPDIR": str(private)}, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["passed", "passed"]


def test_decoding_is_budgeted_before_it_builds() -> None:
    """Issue 15 class 5: a frame of brackets is refused on a count of its bytes, not decoded."""
    import time

    from engine.sandbox import wire

    frame = b"[" * (wire.MAX_CONTAINERS + 1)
    start = time.monotonic()
    with pytest.raises(wire.ProtocolError, match="containers"):
        wire.loads(frame)
    assert time.monotonic() - start < 0.5
    with pytest.raises(wire.ProtocolError, match="items"):
        wire.decode({"l": [0] * (wire.MAX_ITEMS + 1)}, lambda *_: None)
    hostile = [{"npl": ["a"] * 5000, "dtype": "<U4096", "shape": [5000]},  # 80 MB from 30 KB of JSON
               {"npl": [], "dtype": "<U1", "shape": [10**9]}, {"npl": [1], "dtype": "<U1", "shape": [1]},
               {"npl": ["a"], "dtype": "<i8", "shape": [1]}, {"date": [2020, 13, 1]}, {"arr": "Z", "data": ""},
               {"arr": "d", "data": "AAA="}, {"re": "(", "flags": 0}, {"tzv": {"off": {"td": [2, 0, 0]}}}]
    for enc in hostile:
        with pytest.raises(wire.ProtocolError):
            wire.decode(enc, lambda *_: None)


def test_cli_separate_tests_file_with_entry_point(tmp_path: Path) -> None:
    """HumanEval's shape: the program file whole, a tests file with METADATA and check(candidate)."""
    prog, tests = tmp_path / "p.py", tmp_path / "t.py"
    prog.write_text(ADD)
    tests.write_text("METADATA = {'author': 'x'}\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n"
                     "    assert candidate(-1, 1) == 0\n")
    cmd = [sys.executable, "-m", "engine.cli.main", "sandbox", str(prog), "--tests", str(tests), "--entry-point", "add"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "passed", out.stdout
    prog.write_text("def add(a, b):\n    return a * b\n")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and json.loads(out.stdout)["status"] == "failed"


@pytest.mark.parametrize("outer", ["auto", "none"])
def test_every_stdlib_module_imports_in_any_mode(outer: str) -> None:
    """Not only the preloaded ones: an own-uid child must reach the interpreter's files (the
    interpreter may live under a 0700 home), with bubblewrap and without."""
    mods = "gzip zipfile tarfile shlex glob uuid asyncio email.utils xml.etree.ElementTree csv secrets".split()
    program = "".join(f"import {m}\n" for m in mods) + ADD
    with SandboxPool(workers=1, outer=outer) as p:
        v = p.run(Job(program, TEST, timeout=10.0))
    assert v.passed, v


def test_literal_unrolling_is_bounded() -> None:
    import time

    start = time.monotonic()
    with pytest.raises(Unsupported, match="visited"):
        split("def f():\n    pass\nfor i in range(1000000):\n    for j in range(1000000):\n        pass\n"
              "    assert f() is None\n")
    assert time.monotonic() - start < 5.0


def test_unparsable_files_never_crash_the_reader() -> None:
    assert split("def f():\n    return 1\x00\nassert f() == 1\n")[1] == ""  # the sandbox reports it
    with pytest.raises(Unsupported, match="does not parse"):
        split(ADD, "assert add(1, 2) == 3\x00\n")
    assert split(ADD + "assert add(1, 2) == " + "-" * 100_000 + "3\n")[1] == ""  # too deep for the parser


# every value the program may return, built the same way on both sides: the trusted side's copy
# must equal it and have its type (numpy arrays: dtype, shape and items)
STDLIB_VALUES = {
    "np_str": "np.array([['a', 'bc'], ['', 'déf']])",
    "np_bytes": "np.array([b'a', b'bc\\x00x'])",
    "np_object": "np.array(['a', 1, None, [2, 3]], dtype=object)",
    "np_datetime": "np.array(['2020-01-02', '1999-12-31'], dtype='datetime64[D]')",
    "np_empty_str": "np.zeros((0, 3), dtype='<U4')",
    "np_scalar_datetime": "np.datetime64('2020-01-02T03:04')",
    "date": "datetime.date(2020, 1, 2)",
    "datetime": "datetime.datetime(2020, 1, 2, 3, 4, 5, 6)",
    "datetime_tz": "datetime.datetime(2020, 1, 2, 3, tzinfo=datetime.timezone(datetime.timedelta(hours=-5), 'EST'))",
    "datetime_utc": "datetime.datetime(2020, 1, 2, tzinfo=datetime.timezone.utc)",
    "time": "datetime.time(23, 59, 1, 5, fold=1)",
    "timedelta": "datetime.timedelta(days=-3, seconds=7, microseconds=9)",
    "decimal": "decimal.Decimal('-1.2300E+5')",
    "decimal_nan": "decimal.Decimal('NaN')",
    "fraction": "fractions.Fraction(-3, 9)",
    "complex": "complex(1.5, -2)",
    "array": "array.array('d', [1.5, -2.0])",
    "array_str": "array.array('u', 'hé')",
    "chainmap": "collections.ChainMap({'a': 1}, {'b': 2, 'a': 3})",
    "ordereddict": "collections.OrderedDict([('b', 1), ('a', 2)])",
    "pattern": "re.compile(b'a+', re.I)",
    "slice": "slice(1, None, -2)",
    "frozenset": "frozenset({1, 'a'})",
    "bytes": "b'\\x00\\xff'",
    "intenum_as_int": "http.HTTPStatus.OK",
}
IMPORTS = "import array, collections, datetime, decimal, fractions, http, re\nimport numpy as np\n"


def _same(got: object, want: object) -> bool:
    import numpy as np

    if isinstance(want, np.ndarray):
        return (type(got) is np.ndarray and got.dtype == want.dtype and got.shape == want.shape
                and got.tolist() == want.tolist())
    if type(want).__module__ == "http":  # an IntEnum member travels as its int, equal as in-process
        return got == want and type(got) is int
    if isinstance(want, decimal.Decimal) and want.is_nan():
        return type(got) is decimal.Decimal and got.is_nan()
    return got == want and type(got) is type(want) and repr(got) == repr(want)


def test_stdlib_and_numpy_values_round_trip_as_in_process() -> None:
    """Each value the encoder knows is rebuilt as the same type and value (fast: no pool)."""
    from engine.sandbox import wire

    ns: dict = {}
    exec(IMPORTS, ns)  # noqa: S102 - the test's own literals
    for name, expr in STDLIB_VALUES.items():
        value = eval(expr, ns)  # noqa: S307
        got = wire.decode(wire.loads(wire.pack_msg(wire.encode(value, lambda v: 0))[4:]), lambda *_: None)
        assert _same(got, value), (name, got, value)


def test_numpy_strings_and_stdlib_values_compare_as_in_process(pool: SandboxPool) -> None:
    """A numpy array of strings used to end the child (SIGKILL); a date compared unequal."""
    names = list(STDLIB_VALUES)
    program = IMPORTS + "".join(f"def v_{n}():\n    return {STDLIB_VALUES[n]}\n" for n in names)
    tests = (IMPORTS + "import numpy\n"
             + "".join(f"w = {STDLIB_VALUES[n]}\ng = v_{n}()\nassert (g == w).all() and g.dtype == w.dtype "
                       f"and g.shape == w.shape if isinstance(w, numpy.ndarray) else g == w or g != g, {n!r}\n"
                       for n in names if n != "decimal_nan"))
    v = run(pool, program, tests)
    assert v.passed, v


def test_a_malformed_reply_is_a_clean_verdict(pool: SandboxPool) -> None:
    """A reply the trusted side cannot decode is named as such, not as the kill that followed."""
    program = ("import sys\nw = sys.modules['engine.sandbox.wire']\nw.encode = lambda v, r, *a: {'zz': 1}\n"
               "def add(a, b):\n    return 3\n")
    v = run(pool, program)
    assert (v.status, v.error_type) == ("error", "ProtocolError") and "zz" in v.detail, v


def test_no_kernel_layer_means_check_refuses() -> None:
    """`pmat check` refuses a host where only the audit hook would confine programs."""
    from engine.sandbox.isolation import kernel_isolated

    assert not kernel_isolated(["own-uid", "rlimits", "audit-hook", "scrubbed-env", "tests-outside-program"])
    assert kernel_isolated(["seccomp", "audit-hook"]) and kernel_isolated(["landlock-abi-1"])


def test_handles_of_always_true_objects_are_true(pool: SandboxPool) -> None:
    """A re.Match, an enum member or a plain instance is true in-process (no __bool__, no __len__):
    `assert f(x)` passes as it would there; one with __len__ or __bool__ still has no truth value."""
    program = ("import re, enum\nclass C(enum.Enum):\n    A = 0\nclass Plain:\n    pass\n"
               "class Empty:\n    def __len__(self):\n        return 0\n"
               "def m(s):\n    return re.match('a+', s)\ndef c():\n    return C.A\ndef plain():\n    return Plain()\n"
               "def empty():\n    return Empty()\n")
    tests = ("assert m('aab') and m('aab').group(0) == 'aa' and m('aab').span() == (0, 2)\n"
             "assert m('x') is None and c() and plain() and c() != 0\n")
    assert run(pool, program, tests).passed
    assert run(pool, program, "assert empty()\n").error_type == "TypeError"
