"""Per-sample verdicts of ``pmat score`` against evalplus 0.3.1's own, base and plus.

The data is built on the spot in evalplus's format (HumanEval problems with plus inputs
mutated from their tests, tasks with set, Counter, float and None outputs and a slow
reference; MBPP tasks whose inputs evalplus deserialises or whose oracle is special),
and so is a corpus of completions: correct, off by one, wrong type, float noise inside and
outside atol, namedtuple for tuple, generator for list, numpy values, NaN, float for int,
wrong only on plus inputs,
stateful, crash, syntax error, missing function, SystemExit, infinite loop, slow but in
time, one input over its limit, a hang while loading, os._exit, printing, mutating its
arguments. Statuses compare as evalplus writes them (pass, fail, timeout). evalplus runs offline in
a subprocess (HUMANEVAL_OVERRIDE_PATH / MBPP_OVERRIDE_PATH).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.data import evalplus, humaneval, mbpp, plusgen

pytest.importorskip("evalplus")
ROOT = Path(__file__).resolve().parents[1]
MBPP_FILE = mbpp.SHIPPED_DIR / "mbpp.jsonl"
HE_TASKS = (2, 4, 8, 12, 13, 20, 21, 29, 45, 107, 128, 136)  # floats, tuples, None, lists, strings

HELPERS = '''
import collections as _collections

import numpy as _np

def _off(r):
    if isinstance(r, bool):
        return not r
    if isinstance(r, (int, float)):
        return r + 1
    if isinstance(r, str):
        return r + "x"
    if isinstance(r, (list, tuple)):
        return r[1:] if r else type(r)([0])
    if isinstance(r, (set, dict)):
        return type(r)() if r else {0}
    return 0

def _retype(r):
    if isinstance(r, (list, tuple)):
        return tuple(r) if isinstance(r, list) else list(r)
    if isinstance(r, bool):
        return int(r)
    if isinstance(r, int):
        return float(r)
    if isinstance(r, float):
        return str(r)
    if isinstance(r, str):
        return list(r)
    if isinstance(r, set):
        return sorted(r, key=repr)
    return "None" if r is None else dict(r)

def _noise(r, eps):
    if isinstance(r, float):
        return r + eps
    if isinstance(r, (list, tuple)) and r and all(isinstance(x, float) for x in r):
        return type(r)(x + eps for x in r)
    return r

def _named(r):
    if isinstance(r, tuple) and r:
        return _collections.namedtuple("T", [f"f{i}" for i in range(len(r))])(*r)
    return r
'''

WRAPPED = {  # variant -> the expression the wrapper returns (r: the reference's answer)
    "correct": "r",
    "off_by_one": "_off(r)",
    "wrong_type": "_retype(r)",
    "none": "None",
    "noise_in_atol": "_noise(r, 1e-9)",
    "noise_out_of_atol": "_noise(r, 1e-3)",
    "namedtuple": "_named(r)",
    "generator": "(x for x in r) if isinstance(r, list) else r",
    "plus_only_wrong": "r if repr(list(args)) in _BASE else _off(r)",
    "stateful": "r if _calls.append(1) or len(_calls) <= 3 else _off(r)",
    "prints": "print(r, args) or r",
    "numpy": "(_np.array(r) if isinstance(r, list) and r and all(type(x) in (int, float) for x in r) else "
             "_np.float64(r) if isinstance(r, float) else r)",
    "nan": "float('nan') if isinstance(r, float) else r",
    "float_for_int": "float(r) if isinstance(r, int) and not isinstance(r, bool) else r",
}


def _wrap(code: str, entry: str, expr: str, base: list, pre: str = "") -> str:
    return (f"{code}\n{HELPERS}\n_BASE = {{repr(b) for b in {base!r}}}\n_calls = []\n_ref = {entry}\n\n"
            f"def {entry}(*args):\n{pre}    r = _ref(*args)\n    return {expr}\n")


def corpus(task: evalplus.PlusTask, code: str, heavy: bool) -> list[dict]:
    """Samples of one task (code: the full reference program)."""
    e, base = task.entry_point, [list(b) for b in task.base_input]
    out = [{"task_id": task.task_id, "solution": _wrap(code, e, expr, base)} for expr in WRAPPED.values()]
    out += [{"task_id": task.task_id, "solution": s} for s in (
        _wrap(code, e, "r", base, "    for a in args:\n        if isinstance(a, list):\n            a.reverse()\n"),
        f"def {e}(*args):\n    raise ValueError('no')\n",
        f"def {e}(*args:\n    return 1\n",
        f"def other_{e}(*args):\n    return 1\n",
        f"{code}\nimport sys\nsys.exit(0)\n",
        _wrap(code, e, "r", base, "    import os\n    os._exit(0) if _calls else _calls.append(1)\n"),
    )]
    if heavy:
        out += [{"task_id": task.task_id, "solution": s} for s in (
            f"def {e}(*args):\n    while True:\n        pass\n",
            _wrap(code, e, "r", base, "    import time\n    time.sleep(0.05)\n"),
            _wrap(code, e, "r", base, "    import time\n    time.sleep(1.6 if not _calls else 0)\n    _calls.append(1)\n"),
            f"{code}\nwhile True:\n    pass\n",  # a hang while loading: evalplus reports "timeout"
        )]
    return out


def _verdicts(protocol: str, data: Path, samples: Path, tmp: Path) -> tuple[dict, dict]:
    """(pmat's, evalplus's) {task_id: [(base_status, plus_status), ...]}, the two run side by side."""
    dataset = "mbpp" if protocol == "mbpp_plus" else "humaneval"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp / "xdg"), HUMANEVAL_OVERRIDE_PATH=str(data),
               MBPP_OVERRIDE_PATH=str(data), PMAT_CACHE_DIR=str(tmp / "pmat-cache"))
    code = (f"from evalplus.evaluate import evaluate; evaluate(dataset={dataset!r}, samples={str(samples)!r}, "
            "parallel=2, i_just_wanna_run=True)")
    theirs = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    out = tmp / f"{protocol}.verdicts.json"
    ours = subprocess.run([sys.executable, "-m", "engine.cli.main", "score", "--protocol", protocol, "--samples",
                           str(samples), "--data", str(data), "--unpinned", "--out", str(out), "--workers", "2"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    _, err = theirs.communicate(timeout=600)
    assert ours.returncode == 0 and theirs.returncode == 0, (ours.stderr[-2000:], err[-2000:])
    results = json.loads(samples.with_name(samples.stem + "_eval_results.json").read_text())["eval"]
    return ({t: [(s["base_status"], s["plus_status"]) for s in v] for t, v in json.loads(out.read_text())["eval"].items()},
            {t: [(r["base_status"], r["plus_status"]) for r in rs] for t, rs in results.items()})


def _compare(ours: dict, theirs: dict, samples: list[dict]) -> None:
    assert set(ours) == set(theirs)
    index: dict[str, int] = {}
    diffs = []
    for s in samples:
        i = index[s["task_id"]] = index.get(s["task_id"], -1) + 1
        if ours[s["task_id"]][i] != theirs[s["task_id"]][i]:
            diffs.append(f"{s['task_id']}#{i}: pmat {ours[s['task_id']][i]} evalplus {theirs[s['task_id']][i]}\n"
                         f"{s.get('solution', s.get('completion'))[-400:]}")
    assert not diffs, f"{len(diffs)} of {len(samples)} verdicts differ:\n" + "\n".join(diffs[:5])


def test_humaneval_plus_verdicts_match_evalplus(tmp_path: Path) -> None:
    problems, _ = humaneval.load()
    chosen = [problems[i] for i in HE_TASKS]
    data = plusgen.write_jsonl(tmp_path / "HumanEvalPlus-fixture.jsonl", list(plusgen.humaneval_plus_records(chosen)))
    tasks = evalplus.load(data, mbpp=False)
    samples = []
    for i, t in enumerate(tasks):
        samples += corpus(t, t.prompt + t.canonical_solution, heavy=i == 0 or t.task_id == "HumanEval/902")
        samples.append({"task_id": t.task_id, "completion": t.canonical_solution})
    path = plusgen.write_jsonl(tmp_path / "samples.jsonl", samples)
    ours, theirs = _verdicts("humaneval_plus", data, path, tmp_path)
    kinds = {v for vs in ours.values() for v in vs}
    assert {("pass", "pass"), ("fail", "fail"), ("pass", "fail"), ("timeout", "timeout")} <= kinds
    _compare(ours, theirs, samples)


def test_mbpp_plus_verdicts_match_evalplus(tmp_path: Path) -> None:
    chosen = [p for p in mbpp.problems_of(MBPP_FILE, 1, 1000) if int(p.task_id.split("/")[1]) in plusgen.MBPP_SPECIAL]
    data = plusgen.write_jsonl(tmp_path / "MbppPlus-fixture.jsonl", list(plusgen.mbpp_plus_records(chosen)))
    tasks = evalplus.load(data, mbpp=True)
    samples = []
    for i, t in enumerate(tasks):
        samples += corpus(t, t.canonical_solution, heavy=i == 0)
    path = plusgen.write_jsonl(tmp_path / "samples.jsonl", samples)
    ours, theirs = _verdicts("mbpp_plus", data, path, tmp_path)
    assert {("pass", "pass"), ("fail", "fail")} <= {v for vs in ours.values() for v in vs}
    _compare(ours, theirs, samples)
