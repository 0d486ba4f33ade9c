"""The product's main job: `pmat demo --headless` runs the whole PMAT DAG on tiny models,
with one stage killed mid-run and resumed by the supervisor; and its deterministic core, run
twice in processes of different hash seeds, gives byte-identical artifacts, its base the demo's
own (docs/REPRODUCIBILITY.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from engine.events import read_events
from engine.state import load_state
from engine.workspace import Workspace

VICTIM = "sample"


@dataclass
class DemoRun:
    ws: Workspace
    out: str
    returncode: int
    killed: str | None


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One headless demo, its VICTIM stage killed -9 mid-run (one unit done, more to go)."""
    if importlib.util.find_spec("llama_cpp") is None:  # the demo's q4_* evaluations run the GGUF on llama.cpp
        pytest.skip("llama-cpp-python is not installed: scripts/setup.sh installs the prebuilt wheel when the "
                    "wheel cache beside the repository has it (pip install -e '.[llama]' builds it)")
    ws = Workspace(tmp_path_factory.mktemp("e2e") / "demo")
    demo = subprocess.Popen([sys.executable, "-m", "engine.cli.main", "demo", "--headless", "-w", str(ws.root),
                             "--timeout", "900"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    deadline = time.monotonic() + 600
    while killed is None and time.monotonic() < deadline and demo.poll() is None:
        if ws.journal_path.exists():
            a = load_state(ws).stage(VICTIM).latest
            if a is not None and a.outcome is None and a.done > 0 and a.identity:
                os.killpg(a.identity["pid"], signal.SIGKILL)
                killed = a.job_id
        time.sleep(0.1)
    out, _ = demo.communicate(timeout=900)
    return DemoRun(ws, out, demo.returncode, killed)


def test_demo_end_to_end_with_a_killed_stage(demo_run: DemoRun) -> None:
    ws, out, killed = demo_run.ws, demo_run.out, demo_run.killed
    assert killed == f"{VICTIM}.1", out
    assert demo_run.returncode == 0, out
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


# The demo's deterministic core (tiny base -> SFT on eight fixed rows -> merge, the demo spec's own
# parameters) in fresh processes of different PYTHONHASHSEEDs, so
# anything ordered by a set (peft's target_modules) would show. It prints the digests of the core
# artifacts; JSON and Markdown files as text with the workspace path replaced (an adapter names
# its base by absolute path).
CORE = """
import json, sys, yaml
from pathlib import Path
from engine.refs import PACKAGE_ROOT
from engine.spec import pipeline_path
from engine.sdk.run import run_inline
from engine.workspace import Workspace, sha256_file, tree_files

ws = Workspace(Path(sys.argv[1]))
data = Path(sys.argv[1]) / "data.jsonl"
data.parent.mkdir(parents=True)
data.write_text("".join(json.dumps({"prompt": f"Write function number {i}.\\n", "completion": f"def f{i}(x):\\n    return x * {i}\\n"})
                        + "\\n" for i in range(8)))
stages = yaml.safe_load(pipeline_path("demo").read_text())["stages"]
assert run_inline(ws, "tiny_base", "tiny_model", stages["tiny_base"]["params"], outputs=["model"]) == "ok"
base = ws.artifact_path("tiny_base", "model")
sft = {**stages["sft"]["params"], "eval_data_dir": str(PACKAGE_ROOT / "pipelines/data/mbpp")}
assert run_inline(ws, "sft", "sft", sft, {"model": base, "data": data}, outputs=["adapter"]) == "ok"
adapter = ws.artifact_path("sft", "adapter")
assert run_inline(ws, "merge_sft", "merge", {}, {"model": base, "adapter": adapter}, outputs=["model"]) == "ok"
out = {}
for stage, name in (("tiny_base", "model"), ("sft", "adapter"), ("merge_sft", "model")):
    art = ws.artifact_path(stage, name)
    for f in tree_files(art):
        text = f.suffix in (".json", ".md")
        out[f"{stage}.{name}/{f.relative_to(art)}"] = f.read_text().replace(str(ws.root), "WS") if text else sha256_file(f)
print(json.dumps(out))
"""


def run_core(root: str, hash_seed: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CORE, root], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONHASHSEED": str(hash_seed)})


def test_deterministic_core_twice_gives_the_demos_artifacts(demo_run: DemoRun, tmp_path) -> None:
    runs = [run_core(str(tmp_path / f"r{i}"), i + 1) for i in range(2)]
    outs = [r.communicate(timeout=600) for r in runs]
    assert all(r.returncode == 0 for r in runs), [err[-3000:] for _, err in outs]
    first, second = (json.loads(out) for out, _ in outs)
    assert "sft.adapter/adapter_config.json" in first and "merge_sft.model/model.safetensors" in first
    assert {k for k in first if first[k] != second.get(k)} == set()
    # the base is the demo's own, byte for byte (its manifest keeps the hashes after retention removes files)
    files = demo_run.ws.manifest("tiny_base", "model")["files"]
    assert all(first[f"tiny_base.model/{rel}"] == f["sha256"] for rel, f in files.items() if not rel.endswith((".json", ".md")))
