"""The batch loop of every stage that generates (eval, sample, distill): units of prompts, one
backend call each.

A unit is the grain of resume: a stage appends a unit's records (``engine.jsonl``) once the
whole unit is generated, so a kill loses at most the unit in flight, and a resumed run that
plans its units from the same items batches exactly as the first run did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from engine.gen.base import GenOutput, GenRequest
from engine.gen.sampling import task_seed

T = TypeVar("T")
SAMPLING_KEYS = ("n", "temperature", "top_p", "top_k", "max_new_tokens", "seed")  # ``seeded_request``'s, from a stage's params


def in_units(items: list[T], size: int) -> list[list[T]]:
    """``items`` in consecutive units of ``size`` (the last one may be shorter)."""
    return [items[i:i + size] for i in range(0, len(items), size)]


def seeded_request(task_id: str, prompt: str, *, max_new_tokens: int, temperature: float, top_p: float,
                   top_k: int, seed: int, n: int, stop: tuple[str, ...] = ()) -> GenRequest:
    """A request whose samples are seeded by the run's seed and the task, not by its batch."""
    return GenRequest(task_id, prompt, max_new_tokens, temperature, top_p, top_k, task_seed(seed, task_id), n,
                      stop=stop)


def generate_units(backend: Any, units: Iterable[list[T]], request: Callable[[T], GenRequest],
                   check_cancelled: Callable[[], None]) -> Iterator[tuple[list[T], list[GenRequest], list[GenOutput]]]:
    """``(unit, its requests, their outputs)`` for each unit, one ``backend.generate`` call each;
    a cancelled job stops before the next unit starts."""
    for unit in units:
        check_cancelled()
        reqs = [request(item) for item in unit]
        yield unit, reqs, backend.generate(reqs)
