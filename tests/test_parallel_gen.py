"""Data-parallel generation over 2 CPU engines on the tiny model: the same outputs as one engine
(greedy and sampled), merged in request order; resume per shard from the shard files; the eval
and sample stages with gpus: 2 give the per-task results and rows of gpus: 1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.data import mbpp
from engine.events import read_events
from engine.gen.backends import load_backend
from engine.gen.base import GenRequest
from engine.gen.parallel import ParallelBackend, load_engines
from engine.gen.sampling import task_seed
from engine.sdk.base import JobSpec
from engine.sdk.run import params_hash, run_job
from engine.workspace import Workspace

TASKS = [f"Task/{i}" for i in range(7)]


def requests(model: Path, temperature: float, n: int) -> list[GenRequest]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    out = []
    for i, t in enumerate(TASKS):  # prompts of different lengths, so batches pad differently
        text = "Write a function that " + "adds numbers and " * (i + 1) + "returns it."
        prompt = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        out.append(GenRequest(t, prompt, 12, temperature, 0.95, 20, task_seed(7, t), n))
    return out


@pytest.fixture(scope="module")
def two(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParallelBackend]:
    backend = load_engines(tiny_model_dir, "transformers", device="cpu", dtype="float32", engines=2,
                           cache_dir=tmp_path_factory.mktemp("shards"))
    assert isinstance(backend, ParallelBackend) and backend.engines == 2 and backend.device == "cpu,cpu"
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def one(tiny_model_dir: Path):
    return load_backend(tiny_model_dir, "transformers", device="cpu", dtype="float32")


@pytest.mark.parametrize(("temperature", "n"), [(0.0, 1), (0.8, 3)], ids=["greedy", "sampled"])
def test_two_engines_give_one_engines_outputs(tiny_model_dir: Path, one, two: ParallelBackend,
                                              temperature: float, n: int) -> None:
    reqs = requests(tiny_model_dir, temperature, n)
    assert two.generate(reqs) == one.generate(reqs)


def test_resume_per_shard(tiny_model_dir: Path, one, two: ParallelBackend) -> None:
    """A killed run left shard 0 finished and shard 1 torn: a new set of engines on the same shard
    files reads shard 0 back and generates only shard 1's requests again."""
    reqs = requests(tiny_model_dir, 0.5, 2)
    want = two.generate(reqs)
    assert want == one.generate(reqs)
    cache = two.cache_dir
    assert cache is not None
    kept = (cache / "shard-0.jsonl").read_bytes()
    (cache / "shard-1.jsonl").write_bytes(b'{"key": "torn')  # the shard in flight when the job died
    again = ParallelBackend(tiny_model_dir, "transformers", ["cpu", "cpu"], "float32", cache)
    try:
        assert again.generate(reqs) == want
    finally:
        again.close()
    assert (cache / "shard-0.jsonl").read_bytes() == kept  # nothing of shard 0 ran again
    redone = (cache / "shard-1.jsonl").read_text().splitlines()
    assert len(redone) == len(reqs[1::2])  # shard 1's share, generated again (its torn line cut off)


# -- the stages, through the job's gpus (the supervisor sets JobSpec.gpus from the spec) ----------
MBPP = mbpp.SHIPPED_DIR


def run_stage(ws: Workspace, kind: str, params: dict, model: Path, gpus: int, output: str) -> Path:
    job = JobSpec(job_id=f"{kind}.1", stage=kind, kind=kind, attempt=1, workspace=str(ws.root), params=params,
                  inputs={"model": str(model)}, params_hash=params_hash(params), outputs=[output], device="cpu",
                  gpus=gpus)
    job.save(ws.init().job_file(job.job_id))
    outcome = run_job(job, install_signals=False)
    assert outcome == "ok", [e.get("error") or e.get("traceback") for e in read_events(ws.job_log(job.job_id))
                             if e["kind"] in ("job_finished", "warning")]
    return ws.artifact_path(kind, output)


def test_eval_greedy_per_task_results_on_one_and_two_engines(tiny_model_dir: Path, tmp_path: Path) -> None:
    params = {"protocol": "humaneval", "overrides": {"max_new_tokens": 16, "temperature": 0.0, "n": 1}, "seed": 3,
              "limit": 5, "unit_problems": 5, "exec_workers": 1}
    records = []
    for gpus in (1, 2):
        ws = Workspace(tmp_path / f"ws{gpus}")
        out = run_stage(ws, "eval", params, tiny_model_dir, gpus, "results")
        (rec,) = [json.loads(x) for x in ws.ledger_path.read_text().splitlines()]
        records.append((rec, out.read_text()))
    (one, one_file), (two, two_file) = records
    assert one["per_problem"] == two["per_problem"] and one["metrics"] == two["metrics"]
    assert one_file == two_file  # prompts, raw and cleaned completions, verdicts: task by task
    assert two["device"] == "cpu,cpu" and one["device"] == "cpu"


def test_sample_rows_on_one_and_two_engines(tiny_model_dir: Path, tmp_path: Path) -> None:
    params = dict(n=2, temperature=0.8, top_p=0.95, top_k=0, max_new_tokens=16, seed=5, strategy="asserts",
                  data_path=str(MBPP), limit=5, unit_prompts=5, exec_workers=1)
    rows = [(run_stage(Workspace(tmp_path / f"ws{g}"), "sample", params, tiny_model_dir, g, "samples")
             / "samples.jsonl").read_text() for g in (1, 2)]
    assert rows[0] == rows[1] and rows[0].count("\n") == 10
