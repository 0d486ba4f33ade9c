"""CLI on a real workspace: init, status (why-blocked), logs, bad input exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from engine.stages.run import run_inline
from engine.workspace import Workspace


def pmat(*args, check=True):
    res = subprocess.run([sys.executable, "-m", "engine.cli.main", *map(str, args)], capture_output=True, text=True, timeout=120)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def test_status_explains_every_stage(tmp_path):
    ws = Workspace(tmp_path / "ws").init()
    step = {"kind": "command", "params": {"argv": ["{python}", "-c", "print('PMAT_PROGRESS 3 3 items')"]}, "memory_gb": 0.1}
    ws.spec_path.write_text(yaml.safe_dump({"name": "cli", "stages": {
        "first": {**step, "duration_h": 1},
        "second": {**step, "duration_h": 2, "after": ["first"]},
        "gated": {**step, "duration_h": 1, "after": ["first"], "approval": "required"},
    }}))
    assert run_inline(ws, "first", "command", step["params"]) == "ok"
    data = json.loads(pmat("status", "--json", "-w", ws.root).stdout)
    rows = {r["stage"]: r for r in data["rows"]}
    assert rows["first"]["status"] == "done" and rows["first"]["done"] == 3
    assert rows["second"]["reason"].startswith("ready (not requested")
    assert rows["gated"]["reason"] == "needs approval"
    assert data["critical_path"] == ["first", "second"] and data["supervisor_pid"] is None
    text = pmat("status", "-w", ws.root).stdout
    assert "supervisor NOT running" in text and "needs approval" in text
    logs = pmat("logs", "first", "-w", ws.root).stdout
    assert "job_started" in logs and "job_finished" in logs


def test_bad_input_exits_2_with_one_line(tmp_path):
    res = pmat("status", "-w", tmp_path / "nowhere", check=False)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no pipeline spec" in res.stderr
    pmat("init", tmp_path / "ws", "--pipeline", "demo")
    res = pmat("init", tmp_path / "ws", "--pipeline", "demo", check=False)
    assert res.returncode == 2 and "already exists" in res.stderr
    res = pmat("logs", "nojob", "-w", tmp_path / "ws", check=False)
    assert res.returncode == 2 and "no log for job" in res.stderr
