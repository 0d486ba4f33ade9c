"""HumanEval+ / MBPP+ as evalplus 0.3.1 evaluates them (``evalplus/evaluate.py``, ``evalplus/eval``).

Records carry ``task_id``, ``prompt``, ``entry_point``, ``canonical_solution``, ``base_input``,
``plus_input`` and ``atol``; MBPP+ inputs are deserialised per task as evalplus does
(tuples, sets, complex numbers). Expected outputs and the reference's time per input are
computed once per data file by the canonical solutions in a process of their own, and
cached by the file's sha256. A program is checked on the base inputs and, in a second run,
on the plus inputs: each input gets max(1 s, 4 x reference time), the first failure ends
the run, outputs compare exactly, then with ``atol`` (1e-6 for floats when the record says
0), with evalplus's special oracles. The canonical solution never enters a job: only the
expected values do, on the trusted side.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import pickle
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data.humaneval import CANDIDATE
from engine.sandbox.pool import Job

REQUIRED = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input")
# evalplus/eval/_special_oracle.py: outputs that only have to be (not) None
MBPP_OUTPUT_NOT_NONE_TASKS = ("check_str", "text_match_three", "text_starta_endb")


@dataclass(frozen=True)
class PlusTask:
    """One evalplus record, inputs deserialised."""

    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    base_input: list[Any]
    plus_input: list[Any]
    atol: float


def _tuples(x: Any) -> Any:
    return tuple(_tuples(i) for i in x) if isinstance(x, list) else x


def mbpp_deserialize_inputs(task_id: str, inputs: list) -> list:
    """evalplus.data.mbpp.mbpp_deserialize_inputs: JSON lists back to the tuples, sets and complex
    numbers the MBPP+ functions take."""
    tid = int(task_id.split("/")[-1])
    if tid in (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726, 740,
               744, 809):
        return [[tuple(lst) for lst in inp] for inp in inputs]
    if tid in (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780):
        return [[[tuple(lst) for lst in lst_lst] for lst_lst in inp] for inp in inputs]
    if tid in (75, 413, 444, 753):
        return [[[tuple(lst) for lst in inp[0]]] + [inp[1]] for inp in inputs]
    if tid in (106, 750):
        return [[inp[0]] + [tuple(inp[1])] for inp in inputs]
    if tid == 115:
        return [[[set(item) if isinstance(item, list) and len(item) else {} for item in inp[0]]] for inp in inputs]
    if tid == 124:
        return [(float(inp[0]), complex(inp[1])) for inp in inputs]
    if tid in (250, 405, 446, 617, 720, 763, 808):
        return [[tuple(inp[0])] + [inp[1]] for inp in inputs]
    if tid in (259, 401, 445):
        return [[tuple(tuple(lst) for lst in lst_lst) for lst_lst in inp] for inp in inputs]
    if tid == 278:
        return [[tuple(tuple(item) if isinstance(item, list) else item for item in inp[0])] for inp in inputs]
    if tid == 307:
        return [[tuple(inp[0])] + [inp[1], inp[2]] for inp in inputs]
    if tid == 722:
        return [[{key: tuple(value) for key, value in inp[0].items()}] + inp[1:] for inp in inputs]
    if tid == 252:
        return [[complex(inp[0])] for inp in inputs]
    if tid in (580, 615, 791):
        return [_tuples(inp) for inp in inputs]
    return inputs


def jsonl_objects(path: Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line of a ``.jsonl`` or ``.jsonl.gz`` file; a line
    that is not a JSON object, or an unreadable file, is a one-line error naming ``what`` it is."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: unreadable {what} ({exc})") from None
    out = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: not a JSON object ({what})")
        out.append((lineno, obj))
    return out


def load(path: Path, *, mbpp: bool) -> list[PlusTask]:
    """The records of an evalplus file (``.jsonl`` or ``.jsonl.gz``), in file order."""
    tasks = []
    for lineno, r in jsonl_objects(path, "evalplus file"):
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise ValueError(f"{path}:{lineno}: record lacks {', '.join(missing)} (not evalplus format)")
        tid = str(r["task_id"])
        base, plus = r["base_input"], r["plus_input"]
        if mbpp:
            try:
                base, plus = mbpp_deserialize_inputs(tid, base), mbpp_deserialize_inputs(tid, plus)
            except (TypeError, ValueError, KeyError, IndexError) as exc:
                raise ValueError(f"{path}:{lineno}: inputs of {tid} are not MBPP+'s for that task ({exc})") from None
        tasks.append(PlusTask(tid, r["prompt"], r["entry_point"], r["canonical_solution"], base, plus,
                              float(r.get("atol") or 0)))
    return tasks


# -- expected outputs: the canonical solutions run once per data file, apart from everything else --------

_GROUND_TRUTH = r'''
import copy, pickle, sys, time
tasks, not_none = pickle.load(open(sys.argv[1], "rb"))
out = {}
for tid, code, entry, suites in tasks:
    g = {}
    exec(code, g)
    fn = g[entry]
    oracle = {}
    for name, inputs in suites:
        ret, rtime = [], []
        for inp in inputs:
            inp = copy.deepcopy(inp)
            start = time.time()
            ret.append(fn(*inp))
            rtime.append(time.time() - start)
        if entry in not_none:
            ret = [r is not None for r in ret]
        oracle[name], oracle[name + "_time"] = ret, rtime
    out[tid] = oracle
with open(sys.argv[2], "wb") as fh:
    pickle.dump(out, fh)
'''


def cache_dir() -> Path:
    return Path(os.environ.get("PMAT_CACHE_DIR") or Path.home() / ".cache" / "pmat") / "evalplus"


def ground_truth(tasks: list[PlusTask], data_sha256: str, *, mbpp: bool, timeout: float = 3600) -> dict[str, dict]:
    """{task_id: {"base", "base_time", "plus", "plus_time"}}: the canonical solutions' outputs and
    seconds per input (evalplus's ``get_groundtruth``), computed in a subprocess and cached by sha256."""
    cached = cache_dir() / f"{data_sha256}.pkl"
    if cached.is_file():
        with open(cached, "rb") as fh:
            data = pickle.load(fh)
        if isinstance(data, dict) and {t.task_id for t in tasks} <= set(data):
            return data
    cached.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(prefix="pmat-groundtruth-") as tmp:
        job, out = Path(tmp) / "tasks.pkl", Path(tmp) / "out.pkl"
        payload = [(t.task_id, t.prompt + t.canonical_solution, t.entry_point,
                    [("base", t.base_input), ("plus", t.plus_input)]) for t in tasks]
        with open(job, "wb") as fh:
            pickle.dump((payload, MBPP_OUTPUT_NOT_NONE_TASKS if mbpp else ()), fh)
        proc = subprocess.run([sys.executable, "-c", _GROUND_TRUTH, str(job), str(out)], cwd=tmp,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ValueError(f"evalplus data {data_sha256[:12]}: a canonical solution failed: {tail}")
        partial = cached.with_suffix(f".{os.getpid()}.part")
        os.replace(out, partial)
        os.replace(partial, cached)
    with open(cached, "rb") as fh:
        return pickle.load(fh)


# -- the check: evalplus.eval.unsafe_execute's loop, on the trusted side of the sandbox ----------------

_CHECKER = r'''
import base64 as _b64, math as _math, pickle as _pickle
import numpy as _np

def _is_floats(x):
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    if isinstance(x, _np.ndarray):
        return x.dtype == _np.float64 or x.dtype == _np.float32
    return False

def _poly(xs, x):  # evalplus oracle for HumanEval/32
    return sum([coeff * _math.pow(x, i) for i, coeff in enumerate(xs)])

def _surface_Area(base_edge, height):  # evalplus oracle for Mbpp/581
    slant_height = _math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 4 * (base_edge * slant_height) / 2)

def _digit_distance_nums(num1, num2):  # evalplus oracle for Mbpp/558
    a, b = str(num1), str(num2)
    width = max(len(a), len(b))
    return sum(abs(int(x) - int(y)) for x, y in zip(a.zfill(width), b.zfill(width)))

_SET_EQ = ("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum",
           "intersection_array", "find_dissimilar", "Diff")
_NOT_NONE = ("check_str", "text_match_three", "text_starta_endb")
_inputs, _expected, _limits, _atol, _dataset, _entry = _pickle.loads(_b64.b64decode(_DATA))
_fn = __pmat_candidate__
for _i, _inp in enumerate(_inputs):
    with __pmat_deadline__(_limits[_i]):  # the sandbox's per-call clock
        _out = _fn(*_inp)
    _exp = _expected[_i]
    _exact = _out == _exp
    if _dataset == "mbpp":
        if _entry == "are_equivalent":
            _exact = _exact or True
        elif _entry == "sum_div":
            _exact = _exact or _out == 0
        elif _entry == "surface_Area":
            _exact = _exact or abs(_out - _surface_Area(*_inp)) <= _atol
        elif _entry == "digit_distance_nums":
            _exact = _exact or _out == _digit_distance_nums(*_inp)
        elif _entry in _SET_EQ:
            _exact = set(_out) == set(_exp)
        elif _entry in _NOT_NONE:
            _exact = _out == _exp if isinstance(_out, bool) else _exp == (_out is not None)
    if _dataset == "humaneval" and _entry == "find_zero":
        assert abs(_poly(*_inp, _out)) <= _atol, f"input {_i}: not a root"
        continue
    if _atol == 0 and _is_floats(_exp):
        _atol = 1e-6
    if not _exact and _atol != 0:
        assert type(_out) == type(_exp), f"input {_i}: output type {type(_out).__name__}"
        if isinstance(_exp, (list, tuple)):
            assert len(_out) == len(_exp), f"input {_i}: length {len(_out)}"
        assert _np.allclose(_out, _exp, rtol=1e-07, atol=_atol), f"input {_i}: not close"
    else:
        assert _exact, f"input {_i}: wrong output"
'''


def time_limits(ref_times: list[float], min_s: float, factor: float) -> list[float]:
    """evalplus: per input max(min_time_limit, gt_time_limit_factor x the reference's time)."""
    return [max(min_s, factor * t) for t in ref_times]


def make_job(task: PlusTask, solution: str, suite: str, expected: dict, *, mbpp: bool, min_time_s: float,
             time_factor: float, task_timeout_s: float) -> Job:
    """One evalplus run of ``solution`` over one input suite ("base" or "plus")."""
    inputs = task.base_input if suite == "base" else task.plus_input
    limits = time_limits(expected[f"{suite}_time"], min_time_s, time_factor)
    blob = pickle.dumps((inputs, expected[suite], limits, task.atol, "mbpp" if mbpp else "humaneval",
                         task.entry_point))
    runner = f"_DATA = {base64.b64encode(blob).decode()!r}\n{_CHECKER}"
    # evalplus's process budget: min(EVALPLUS_TIMEOUT_PER_TASK=60, sum of limits) + 1, joined for 1 s more
    timeout = min(task_timeout_s, sum(limits)) + 2.0
    return Job(program=solution, runner_code=runner, aliases={CANDIDATE: task.entry_point}, timeout=timeout)
