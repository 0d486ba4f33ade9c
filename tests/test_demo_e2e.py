"""The product's main job: `pmat demo --headless` runs the whole PMAT DAG on tiny models,
with one stage killed mid-run and resumed by the supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from engine.events import read_events
from engine.state import load_state
from engine.workspace import Workspace

VICTIM = "sample"


def test_demo_end_to_end_with_a_killed_stage(tmp_path):
    ws = Workspace(tmp_path / "demo")
    demo = subprocess.Popen([sys.executable, "-m", "engine.cli.main", "demo", "--headless", "-w", str(ws.root),
                             "--timeout", "900"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    deadline = time.monotonic() + 600
    while killed is None and time.monotonic() < deadline and demo.poll() is None:
        if ws.journal_path.exists():
            a = load_state(ws).stage(VICTIM).latest
            if a is not None and a.outcome is None and a.done > 0 and a.identity:
                os.killpg(a.identity["pid"], signal.SIGKILL)  # mid-run: one unit done, more to go
                killed = a.job_id
        time.sleep(0.1)
    out, _ = demo.communicate(timeout=900)
    assert killed == f"{VICTIM}.1", out
    assert demo.returncode == 0, out
    crashed = [e for e in read_events(ws.journal_path) if e["kind"] == "crashed"]
    assert [e["job_id"] for e in crashed] == [killed], out
    state = load_state(ws)
    assert [a.outcome for a in state.stage(VICTIM).attempts] == ["crashed", "ok"]
    assert all(st.done for st in state.stages.values()), out
    # the summary is honest: tiny models fail the compound gate, and it says why
    assert "pipeline: every stage finished" in out
    gate = next(line for line in out.splitlines() if line.strip().startswith("AC-022"))
    assert "FAIL" in gate and "humaneval.pass_at_1 = 0" in gate
    approvals = [e for e in read_events(ws.journal_path) if e["kind"] == "approval_granted"]
    assert [e["target"] for e in approvals] == ["submit"] and "pmat demo" in approvals[0]["note"]
    assert (ws.artifact_path("submit", "bundle") / "model.gguf").is_file()
