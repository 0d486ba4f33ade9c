"""Read-only means read-only: a read-only console session, ``pmat status`` (and the other readers:
``verify`` without ``--accept``, ``logs``) leave every byte of a finished workspace as it was (no
file or folder added or removed, no file changed; the hash cache included)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.gates import evaluate_gates
from engine.overview import load_spec_fast
from engine.workspace import Workspace
from pmat_tui.app import PmatApp
from pmat_tui.fixture import FIXTURE_NOW, fixture_memory, write_fixture

PMAT = [sys.executable, "-m", "engine.cli.main"]


def checksums(root: Path) -> dict[str, str]:
    """Every path under ``root`` (directories too) with its content's sha256 (mtimes left out)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """A finished workspace whose gates hash checkpoints, with a persisted hash cache gone stale
    (an artifact touched since: a reader re-hashes, and must keep what it learnt in memory) and
    torn last lines in the ledger, the journal and a job log."""
    ws = write_fixture(tmp_path / "fx")
    evaluate_gates(load_spec_fast(ws.spec_path, check_params=False), ws, persist_cache=True)
    assert (ws.root / "state" / "hash-cache.json").is_file()
    model = ws.artifact_path("base", "model")
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 1))
    for log in (ws.ledger_path, ws.journal_path, ws.job_log("sft.1")):  # writes in progress: readers skip, never cut
        with open(log, "ab") as fh:
            fh.write(b'{"ts": 1790003000.0, "kind": "prog')
    return ws


LOOK = ("1", "2", "3", "4", "5", "1", "l", "escape", "question_mark", "escape")  # every view, a log, the help
ACT = ("r", "a", "c", "t")  # refused by a read-only console


@pytest.mark.parametrize("readonly", [True, False])
async def test_a_console_that_only_looks_writes_nothing(ws: Workspace, readonly: bool) -> None:
    """Read-only or not, a console whose user only looks (every view, a log, the help) is a reader."""
    before = checksums(ws.root)
    app = PmatApp(ws, readonly=readonly, now=lambda: FIXTURE_NOW, memory_probe=fixture_memory)
    async with app.run_test(size=(160, 40)) as pilot:
        while not app.loaded:
            await pilot.pause(0.01)
        for key in LOOK + (ACT if readonly else ()):
            await pilot.press(key)
            await pilot.pause()
        app.do_refresh()
        await pilot.pause()
    assert checksums(ws.root) == before


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["verify"], ["logs", "supervisor"],
                                  ["logs", "eval_base", "--all"]])
def test_pmat_status_and_other_readers_write_nothing(ws: Workspace, args: list[str]) -> None:
    before = checksums(ws.root)
    out = subprocess.run([*PMAT, *args, "-w", str(ws.root)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert out.returncode == 0, out.stderr
    assert checksums(ws.root) == before
