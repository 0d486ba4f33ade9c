"""The sandbox's isolation: the layers a pool reports and what a host lacks, Landlock alone, the
zygote's children, work dirs of killed pools, and programs running in every mode."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_sandbox import ADD, TEST, run, sandbox_pool  # noqa: F401 - sandbox_pool: the fixture `pool`

from engine.sandbox import landlock
from engine.sandbox.pool import Job, SandboxPool


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


@pytest.mark.parametrize("outer", ["auto", "none"])
def test_every_stdlib_module_imports_in_any_mode(outer: str) -> None:
    """Not only the preloaded ones: an own-uid child must reach the interpreter's files (the
    interpreter may live under a 0700 home), with bubblewrap and without."""
    mods = "gzip zipfile tarfile shlex glob uuid asyncio email.utils xml.etree.ElementTree csv secrets".split()
    program = "".join(f"import {m}\n" for m in mods) + ADD
    with SandboxPool(workers=1, outer=outer) as p:
        v = p.run(Job(program, TEST, timeout=10.0))
    assert v.passed, v


def test_no_kernel_layer_means_check_refuses() -> None:
    """`pmat check` refuses a host where only the audit hook would confine programs."""
    from engine.sandbox.isolation import kernel_isolated

    assert not kernel_isolated(["own-uid", "rlimits", "audit-hook", "scrubbed-env", "tests-outside-program"])
    assert kernel_isolated(["seccomp", "audit-hook"]) and kernel_isolated(["landlock-abi-1"])
