"""Spec validation: every class of bad input gives one line naming file, key and expectation."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from engine.dag import critical_path, learned_durations, topo_order, why_not_running
from engine.spec import SpecError, load_spec, parse_spec, pipeline_path
from engine.state import PipelineState
from engine.workspace import Workspace

PY = "{python}"


def base_spec() -> dict:
    step = {"kind": "command", "params": {"argv": [PY, "-c", "pass"]}, "memory_gb": 1, "duration_h": 1}
    return {
        "name": "t",
        "work_items": {"W-1": {"title": "one"}, "W-2": {"title": "two", "depends_on": ["W-1"]}},
        "stages": {
            "a": {**step, "work_item": "W-1", "params": {"argv": [PY, "-c", "pass"], "publish_output": True}},
            "b": {**step, "after": ["a"], "duration_h": 5, "work_item": "W-2"},
            "c": {**step, "after": ["a"], "duration_h": 2, "work_item": "W-2"},
            "d": {**step, "after": ["b", "c"], "approval": "required", "work_item": "W-2"},
        },
        "acceptance": {"AC-1": {"checkpoint": "a.output", "expr": "x.y >= 1"}},
    }


def write(tmp_path, data) -> str:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def error_of(tmp_path, data) -> str:
    path = write(tmp_path, data)
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(path)
    return msg


def test_valid_spec_loads(tmp_path):
    spec = load_spec(write(tmp_path, base_spec()))
    assert topo_order(spec) == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["stages"]["a"].update(colour="red"), "stages.a.colour: unknown key"),
        (lambda d: d["stages"]["a"].update(memory_gb=-3), "stages.a.memory_gb: Input should be greater than or equal to 0"),
        (lambda d: d["stages"]["a"].update(duration_h="long"), "stages.a.duration_h: Input should be a valid number"),
        (lambda d: d["stages"]["b"].update(after=["zz"]), "stages.b.after: unknown stage 'zz'"),
        (lambda d: d["stages"]["a"].update(after=["d"]), "stages: dependency cycle"),
        (lambda d: d["stages"]["a"].update(kind="nope"), "stages.a.kind: no stage kind 'nope'"),
        (lambda d: d["stages"]["a"]["params"].update(argvv=1), "stages.a.params.argvv: unknown key"),
        (lambda d: d["stages"]["a"].update(inputs={"model": "model:base"}), "stages.a.inputs.model: unknown model 'base'"),
        (lambda d: d["stages"]["a"].update(work_item="W-9"), "stages.a.work_item: unknown work item 'W-9'"),
        (lambda d: d["work_items"]["W-1"].update(depends_on=["W-2"]), "work_items: dependency cycle"),
        (lambda d: d["acceptance"]["AC-1"].update(expr="x >= "), "acceptance.AC-1.expr"),
        (lambda d: d.pop("stages"), "stages: required key is missing"),
        (lambda d: d["stages"].update({"../x": d["stages"]["a"]}), "stages.../x: a stage name is letters, digits and '_'"),
        (lambda d: d["stages"]["a"].update(duration_h=float("inf")), "stages.a.duration_h: Input should be a finite number"),
        (lambda d: d["stages"]["a"].update(device="cdua"), "stages.a.device: String should match pattern"),
    ],
)
def test_bad_input_names_key(tmp_path, mutate, expected):
    data = copy.deepcopy(base_spec())
    mutate(data)
    assert expected in error_of(tmp_path, data)


def test_invalid_yaml_and_missing_file(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text("stages: [\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(p)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "absent.yaml")
    p.write_bytes(b"name: \xff\n")
    with pytest.raises(SpecError, match="not UTF-8 text"):
        load_spec(p)


def test_cli_check_exit_codes(tmp_path):
    good = write(tmp_path, base_spec())
    ok = subprocess.run([sys.executable, "-m", "engine.cli.main", "check", good], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = copy.deepcopy(base_spec())
    bad["stages"]["a"]["memory_gb"] = -1
    (tmp_path / "bad").mkdir()
    path = write(tmp_path / "bad", bad)
    res = subprocess.run([sys.executable, "-m", "engine.cli.main", "check", path], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "stages.a.memory_gb" in res.stderr


def test_critical_path_and_learned_durations(tmp_path):
    spec = parse_spec(base_spec())
    path, hours = critical_path(spec)
    assert path == ["a", "b", "d"] and hours == 7
    # stage b ran in 1 h instead of 5: b takes its measured time, and the other
    # stages of its kind are scaled by the same ratio (0.2) until they run
    ws = Workspace(tmp_path / "ws").init()
    st = PipelineState(ws)
    a = st.attempt("b.1")
    a.started_at, a.finished_at, a.outcome = 0.0, 3600.0, "ok"
    learned = learned_durations(spec, st)
    assert learned == pytest.approx({"a": 0.2, "b": 1.0, "c": 0.4, "d": 0.2})
    path, hours = critical_path(spec, st)
    assert path == ["a", "b", "d"] and hours == pytest.approx(1.4)
    # what is left: b done counts zero, so c now bounds the finish
    st.attempt("a.1").outcome = "ok"
    path, hours = critical_path(spec, st, remaining=True)
    assert path == ["a", "c", "d"] and hours == pytest.approx(0.6)


def test_why_not_running_reasons(tmp_path):
    spec = parse_spec(base_spec())
    st = PipelineState(Workspace(tmp_path / "ws").init())
    assert why_not_running(spec, st, "d").text == "waiting on b, c"
    for s in ("a", "b", "c"):
        st.attempt(f"{s}.1").outcome = "ok"
    assert why_not_running(spec, st, "d").kind == "needs_approval"
    b = why_not_running(spec, st, "d", approved=True, need=8 << 30, headroom=3 << 30)
    assert b.text == "waiting for memory: needs 8.0 GB, 3.0 GB free after reservations"
    st.attempt("c.1").outcome = "failed"
    assert why_not_running(spec, st, "d").text == "dependency c failed"


def test_shipped_pipelines_load_and_share_one_dag():
    pmat, demo = load_spec(pipeline_path("pmat")), load_spec(pipeline_path("demo"))
    assert set(pmat.work_items) == set(demo.work_items) == {
        "PMAT-006", "PMAT-007", "PMAT-014", "PMAT-008", "PMAT-010", "PMAT-011", "PMAT-017", "PMAT-037"}
    assert pmat.work_items["PMAT-010"].depends_on == ["PMAT-007", "PMAT-008"]
    assert set(pmat.acceptance) == set(demo.acceptance)
    assert {s.kind for s in pmat.stages.values()} | {"tiny_model"} == {s.kind for s in demo.stages.values()}


@pytest.mark.parametrize(
    "stage, inputs, ties, expected",
    [
        ("ties", {"model_c": "merge_sft.model"}, None,
         "stages.ties.params.ties.weights: names ['model_a', 'model_b']; the specialist inputs are "
         "['model_a', 'model_b', 'model_c']"),
        ("ties", {"model_c": "merge_sft.model"}, {"model_c": 0.5}, None),  # three specialists, all weighed
        ("slerp", {"model_c": "merge_sft.model"}, None, "stages.slerp.params.slerp: interpolates exactly 2"),
        ("ties", {"model_b": None}, None, "stages.ties.inputs: needs at least 2 named model_*, got ['model_a']"),
        ("ties", {"extra": "merge_sft.model"}, None, "stages.ties.inputs: unexpected ['extra']"),
    ],
)
def test_ties_specialists_are_the_model_inputs(tmp_path, stage, inputs, ties, expected):
    data = yaml.safe_load(pipeline_path("pmat").read_text())
    st = data["stages"][stage]
    st["inputs"] = {k: v for k, v in {**st["inputs"], **inputs}.items() if v is not None}
    if ties:
        for key in ("weights", "densities"):
            st["params"]["ties"][key] = {**st["params"]["ties"][key], **ties}
    if expected is None:
        assert set(load_spec(write(tmp_path, data)).stages[stage].inputs) == {"base", "model_a", "model_b", "model_c"}
    else:
        assert expected in error_of(tmp_path, data)


def test_pmat_critical_path_runs_through_sampling_and_dpo(tmp_path):
    spec = load_spec(pipeline_path("pmat"))
    path, hours = critical_path(spec)
    assert path[:4] == ["sample", "pairs", "dpo", "merge_dpo"] and "ties" in path and "prune" in path
    assert hours == pytest.approx(sum(spec.stages[s].duration_h for s in path))
    st = PipelineState(Workspace(tmp_path / "ws").init())
    assert why_not_running(spec, st, "dpo").text == "waiting on pairs"
    assert why_not_running(spec, st, "ties").text == "waiting on merge_sft, merge_dpo"
    for s in topo_order(spec):
        if s != "submit":
            st.attempt(f"{s}.1").outcome = "ok"
    assert why_not_running(spec, st, "submit").kind == "needs_approval"


# -- pmat check catches before launch what a run would hit (issue 21 item 7) ------------------
def check(path) -> tuple[int, str]:
    res = subprocess.run([sys.executable, "-m", "engine.cli.main", "check", str(path)], capture_output=True, text=True)
    assert res.returncode in (0, 2) and (res.returncode == 0 or res.stderr.count("\n") == 1), res.stderr
    return res.returncode, res.stderr


def test_duplicate_keys_are_refused_and_merge_keys_still_override(tmp_path):
    text = yaml.safe_dump(base_spec(), sort_keys=False)
    twice = tmp_path / "twice.yaml"
    twice.write_text(text + "settings: {poll_interval_s: 1}\nsettings: {poll_interval_s: 2}\n")
    with pytest.raises(SpecError, match=r"line \d+: invalid YAML: duplicate key 'settings' \(first at line"):
        load_spec(twice)
    stage_twice = tmp_path / "stage_twice.yaml"
    stage_twice.write_text(text.replace("  b:\n", "  a:\n", 1))
    with pytest.raises(SpecError, match="duplicate key 'a'"):
        load_spec(stage_twice)
    merged = tmp_path / "merged.yaml"
    data = text.replace("  c:\n", "  c: &c\n", 1)
    merged.write_text(data.replace("acceptance:", "  e:\n    <<: *c\n    duration_h: 9\nacceptance:", 1))
    assert load_spec(merged).stages["e"].duration_h == 9


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["acceptance"]["AC-1"].update(checkpoint="a.outptu"), "acceptance.AC-1.checkpoint: stage 'a' (kind command) "
     "has no output 'outptu' (did you mean 'output'?)"),
    (lambda d: d.update(models={"m": {"artifact": "c.output"}}), "models.m.artifact: stage 'c' (kind command) has no output 'output'"),
    (lambda d: d["stages"]["a"]["params"].update(argvv=d["stages"]["a"]["params"].pop("argv")),
     "stages.a.params.argvv: unknown key (did you mean 'argv'?)"),
    (lambda d: d["stages"]["a"].update(memory_gbb=1), "stages.a.memory_gbb: unknown key (did you mean 'memory_gb'?)"),
    (lambda d: d["stages"]["a"].update(kind="comand"), "stages.a.kind: no stage kind 'comand' (no module engine/stages/comand.py) (did you mean 'command'?)"),
    (lambda d: d["stages"]["b"].update(after=["aa"]), "stages.b.after: unknown stage 'aa'"),
])
def test_check_names_typos_with_did_you_mean(tmp_path, mutate, expected):
    data = copy.deepcopy(base_spec())
    mutate(data)
    code, err = check(write(tmp_path, data))
    assert code == 2 and expected in err, err


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    import shutil

    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


def _spec_with(tmp_path, models=None, datasets=None) -> str:
    data = copy.deepcopy(base_spec())
    data["models"] = models or {}
    data["datasets"] = datasets or {}
    return write(tmp_path, data)


def test_check_reads_model_dirs_and_datasets(tmp_path, model_copy):
    from engine.workspace import sha256_file

    assert check(_spec_with(tmp_path, {"base": {"path": "model"}}))[0] == 0
    code, err = check(_spec_with(tmp_path, {"base": {"path": "nowhere"}}))
    assert code == 2 and f"models.base.path: {tmp_path / 'nowhere'}: does not exist (expected a Hugging Face checkpoint" in err
    data = tmp_path / "d.jsonl"
    data.write_text('{"x": 1}\n')
    good = {"d": {"path": "d.jsonl", "sha256": sha256_file(data)}}
    assert check(_spec_with(tmp_path, datasets=good))[0] == 0
    data.write_text('{"x": 2}\n')
    code, err = check(_spec_with(tmp_path, datasets=good))
    assert code == 2 and f"datasets.d.sha256: {data} hashes to" in err and "the spec pins" in err
    (model_copy / "tokenizer.json").unlink()
    code, err = check(_spec_with(tmp_path, {"base": {"path": "model"}}))
    assert code == 2 and "models.base.path:" in err and "no tokenizer (expected tokenizer.json" in err
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    (model_copy / "tokenizer.json").write_text("{}")
    code, err = check(_spec_with(tmp_path, {"base": {"path": "model"}}))
    assert code == 2 and f"{weights}: tensor" in err and "truncated or corrupt" in err


def test_check_finds_a_parameter_naming_a_missing_path(tmp_path):
    data = yaml.safe_load(pipeline_path("demo").read_text())
    data["stages"]["sft"]["params"]["eval_data_dir"] = str(tmp_path / "no-mbpp")
    code, err = check(write(tmp_path, data))
    assert code == 2 and f"stages.sft.params.eval_data_dir: {tmp_path / 'no-mbpp'} does not exist" in err, err
