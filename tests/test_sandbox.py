"""The sandbox's verdict categories, the pool's dispatch, and `pmat sandbox` with the tests it
reads as data. The pool fixture and helpers here serve the other test_sandbox_* files too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.sandbox.literal import Unsupported, split
from engine.sandbox.pool import Job, Limits, SandboxPool
from engine.sandbox.slot import verdict_from

ADD = "def add(a, b):\n    return a + b\n"
TEST = "assert add(1, 2) == 3\n"


@pytest.fixture(scope="module", name="pool")
def sandbox_pool():
    """Two warm slots; one pool per test module (the other test_sandbox_* files import it by this name)."""
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
