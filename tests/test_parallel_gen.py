"""Data-parallel generation over 2 CPU engines on the tiny model: the same outputs as one engine
(greedy and sampled), merged in request order; resume per shard from the shard files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.gen.base import GenRequest, load_backend
from engine.gen.parallel import ParallelBackend, load_engines
from engine.gen.sampling import task_seed

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
