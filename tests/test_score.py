"""`pmat score`: samples from anywhere, scored under a protocol on checked data, the eval stage's path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli.main import main
from engine.data import humaneval, plusgen, protocols
from engine.results import read_ledger
from engine.sdk.run import run_inline
from engine.workspace import Workspace, sha256_file


@pytest.fixture(scope="module")
def plus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = plusgen.humaneval_plus_records(humaneval.load()[0][:3], n_plus=4, extra=False)
    return plusgen.write_jsonl(tmp_path_factory.mktemp("data") / "HumanEvalPlus-mini.jsonl", rows)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PMAT_CACHE_DIR", str(tmp_path / "cache"))


def test_score_plus_samples_on_an_unpinned_file(tmp_path: Path, plus_file: Path, capsys: pytest.CaptureFixture) -> None:
    he = humaneval.load()[0]
    rows = [{"task_id": "HumanEval/0", "completion": he[0].canonical_solution},
            {"task_id": "HumanEval/0", "solution": he[0].prompt + he[0].canonical_solution},
            {"task_id": "HumanEval/0", "completion": "    raise ValueError(numbers)\n"},
            {"task_id": "HumanEval/1", "completion": "    return []\n"},
            {"task_id": "HumanEval/1", "completion": "    return [paren_string]\n"},
            {"task_id": "HumanEval/1", "completion": "    while True:\n        pass\n"},
            {"task_id": "HumanEval/999", "completion": "    return 1\n"}]
    samples, out = plusgen.write_jsonl(tmp_path / "s.jsonl", rows), tmp_path / "v.json"
    argv = ["score", "--protocol", "humaneval_plus", "--samples", str(samples), "--data", str(plus_file)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(plus_file) in err and "272720b9" in err  # the pin, refused
    assert main([*argv, "--unpinned", "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr()
    assert "NOT the pinned release" in printed.out and "HumanEval/999" in printed.err
    rep = json.loads(out.read_text())
    assert rep["data_pinned_by"] == "user" and rep["dataset_hash"] == sha256_file(plus_file)
    assert rep["protocol"]["data_sha256"] == rep["dataset_hash"] and rep["protocol_id"] == "humaneval_plus"
    assert rep["protocol_digest"] != protocols.get("humaneval_plus").digest()
    got = {t: [(s["base_status"], s["plus_status"]) for s in v] for t, v in rep["eval"].items()}
    assert got["HumanEval/0"] == [("pass", "pass"), ("pass", "pass"), ("fail", "fail")]
    assert got["HumanEval/1"][0][0] == "fail" and got["HumanEval/1"][2] == ("fail", "fail")
    assert rep["missing_tasks"] == ["HumanEval/2"] and rep["n_problems"] == 2
    assert rep["metrics"]["pass@1"] == pytest.approx((2 / 3 + 0) / 2)
    assert rep["sandbox"]["network"]


def test_score_checks_the_pin_and_the_samples(tmp_path: Path, capsys: pytest.CaptureFixture, plus_file: Path) -> None:
    he = humaneval.load()[0]
    good = plusgen.write_jsonl(tmp_path / "good.jsonl", [{"task_id": "HumanEval/2", "completion": he[2].canonical_solution}])
    out = tmp_path / "he.json"
    assert main(["score", "--protocol", "humaneval", "--samples", str(good), "--out", str(out)]) == 0
    assert "pinned by the project" in capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert rep["protocol_digest"] == protocols.get("humaneval").digest() and rep["metrics"] == {"pass@1": 1.0}
    folder = tmp_path / "samples"  # evalplus's other layout: <task_id with _>/<n>.py, whole solutions
    for i, body in enumerate((he[2].canonical_solution, "    return 0.5\n")):
        (folder / "HumanEval_2").mkdir(parents=True, exist_ok=True)
        (folder / "HumanEval_2" / f"{i}.py").write_text(he[2].prompt + body)
    assert main(["score", "--protocol", "humaneval", "--samples", str(folder), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"] == {"pass@1": 0.5}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0", "completion": "x"}\nnot json\n')
    for argv, needle in (
            (["--protocol", "humaneval", "--samples", str(bad)], f"{bad}:2"),
            (["--protocol", "humaneval_pluss", "--samples", str(good)], "did you mean 'humaneval_plus'"),
            (["--protocol", "mbpp_plus", "--samples", str(good)], "--data"),
            (["--protocol", "humaneval_plus", "--samples", str(good), "--data", str(plus_file), "--sha256", "0" * 64],
             "0000000000"),
    ):
        assert main(["score", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err


def test_eval_stage_and_score_give_the_same_verdicts(tmp_path: Path, tiny_model_dir: Path, plus_file: Path) -> None:
    """One path: the solutions the eval stage scored, scored again by pmat score, verdict for verdict."""
    ws = Workspace(tmp_path / "ws")
    sha = sha256_file(plus_file)
    params = {"protocol": "humaneval_plus", "data_path": str(plus_file), "dataset_sha256": sha, "seed": 1,
              "overrides": {"max_new_tokens": 24, "temperature": 1.0, "n": 3, "prompt_mode": "base"}, "ks": [1, 2],
              "exec_workers": 2}
    assert run_inline(ws, "ev", "eval", params, {"model": tiny_model_dir}, outputs=["results"]) == "ok"
    lines = [json.loads(x) for x in ws.artifact_path("ev", "results").read_text().splitlines()]
    rows = [{"task_id": r["task_id"], "solution": s["solution"]} for r in lines for s in r["samples"]]
    out = tmp_path / "again.json"
    samples = plusgen.write_jsonl(tmp_path / "s.jsonl", rows)
    assert main(["score", "--protocol", "humaneval_plus", "--samples", str(samples), "--data", str(plus_file),
                 "--sha256", sha, "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    (rec,) = read_ledger(ws)
    assert {t: [(s["base_status"], s["plus_status"]) for s in v] for t, v in again["eval"].items()} == \
        {r["task_id"]: [(s["base_status"], s["plus_status"]) for s in r["samples"]] for r in lines}
    assert {k: rec["metrics"][k] for k in ("pass@1", "base_pass@1")} == again["metrics"]
    assert again["protocol"]["data_sha256"] == rec["protocol"]["data_sha256"] == sha
