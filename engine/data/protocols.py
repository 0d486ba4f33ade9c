"""Evaluation protocols: named, versioned definitions of everything that changes a score.

A protocol fixes the data file (by sha256), the task set, the exact prompt text for base
and instruct models, stop sequences, post-processing, sampling (n, temperature,
max_new_tokens), time limits and the comparison rules. Results name the protocol id and
the digest of its effective definition, so a number is comparable with another exactly
when the digests agree. The plus protocols and the prompts follow evalplus 0.3.1
(``evalplus.codegen`` / ``evalplus.evaluate``), whose figures model cards quote.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from engine.data.pins import pin_for

# evalplus.codegen's prompts for models with a chat template (the "instruct" mode)
INSTRUCTION_PREFIX = ("Please provide a self-contained Python script that solves the following problem "
                      "in a markdown code block:")
RESPONSE_PREFIX = ("Below is a Python script with a self-contained function that solves the problem and "
                   "passes corresponding tests:")
# evalplus.provider.utility: EOS for every model, the dataset's extras for direct completion
_EOS = ("<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__", "\ndef main(", "\nprint(")
_HE_BASE_STOP = _EOS + ("\ndef ", "\nclass ", "\nimport ", "\nfrom ", "\nassert ")
_MBPP_BASE_STOP = _EOS + ('\n"""', "\nassert")
_CHAT_STOP = _EOS + ("\n```\n",)
# the task text of mbpp_leaderboard (the original roadmap: the function name and all asserts)
MBPP_TASK = '"""\n{text}\nThe function must be named `{entry_point}`. Your code should pass these tests:\n\n{asserts}\n"""\n'


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol; ``as_dict()`` is what results carry and ``digest()`` names.

    A data file counts as the pinned one when its sha256 is ``data_sha256`` or
    ``data_sha256_decompressed`` (evalplus's own cache holds the decompressed JSONL).
    """

    id: str
    version: int
    benchmark: str              # the ledger's benchmark name
    dataset: str                # an engine.data.pins id
    data_sha256: str | None     # sha256 of the data file's bytes (the release asset)
    data_sha256_decompressed: str | None  # the same data as the JSONL inside a .gz asset
    data_pinned_by: str         # "project" (the pin in engine.data.pins) or "user" (a file pinned in the spec)
    task_ids: str               # the task set: "all" or "first-last" (numeric part of the task ids)
    n_tasks: int
    task_prompt: str            # "dataset" (the record's prompt) or a template over the record's fields
    prompt_mode: str            # "auto" (instruct when the tokenizer has a chat template, as evalplus), "base", "instruct"
    base_prompt: str            # how a base model's text is made from the task prompt
    instruction_prefix: str     # instruct models: evalplus's chat prompt around the task prompt
    response_prefix: str
    stop_base: tuple[str, ...]
    stop_instruct: tuple[str, ...]
    postprocess: str            # "evalplus-sanitize": cut at a stop, tabs to spaces, base: prompt + text; sanitize
    n: int
    temperature: float
    top_p: float                # used when sampling (temperature > 0), as evalplus; greedy ignores it
    max_new_tokens: int
    tests: str                  # "check" (HumanEval's check(entry_point)), "asserts" (MBPP), "evalplus"
    plus: bool                  # evalplus: plus inputs too; a sample passes when base and plus pass
    min_time_limit_s: float     # evalplus: per input max(min_time_limit_s, gt_time_factor x reference time)
    gt_time_factor: float
    task_timeout_s: float       # wall clock of one program's whole run (evalplus: min(60, sum of limits) + 2)
    atol_float_default: float   # evalplus: atol forced for float outputs when the record's atol is 0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def digest(self) -> str:
        return digest_of(self.as_dict())

    def accepts_data(self, sha256: str) -> bool:
        return sha256 in (self.data_sha256, self.data_sha256_decompressed)

    def task_range(self) -> tuple[int, int] | None:
        if self.task_ids == "all":
            return None
        lo, hi = self.task_ids.split("-")
        return int(lo), int(hi)


def digest_of(d: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of a protocol dict."""
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _evalplus_family(**kw: Any) -> Protocol:
    common = dict(version=1, data_pinned_by="project", task_prompt="dataset", prompt_mode="auto",
                  base_prompt="task prompt stripped, then a newline (evalplus codegen)",
                  instruction_prefix=INSTRUCTION_PREFIX, response_prefix=RESPONSE_PREFIX, stop_instruct=_CHAT_STOP,
                  postprocess="evalplus-sanitize", n=1, temperature=0.0, top_p=0.95, max_new_tokens=768,
                  min_time_limit_s=1.0, gt_time_factor=4.0, task_timeout_s=60.0, atol_float_default=1e-6)
    common.update(kw)
    pin = pin_for(common["dataset"])
    return Protocol(data_sha256=pin.sha256, data_sha256_decompressed=pin.decompressed_sha256, **common)


PROTOCOLS: dict[str, Protocol] = {p.id: p for p in (
    # HumanEval with its own tests (check(candidate)), evalplus's prompts and greedy decoding
    _evalplus_family(id="humaneval", benchmark="humaneval", dataset="humaneval", task_ids="all", n_tasks=164,
                     stop_base=_HE_BASE_STOP, tests="check", plus=False, task_timeout_s=10.0),
    _evalplus_family(id="humaneval_plus", benchmark="humaneval_plus", dataset="humaneval_plus", task_ids="all",
                     n_tasks=164, stop_base=_HE_BASE_STOP, tests="evalplus", plus=True),
    # the original roadmap's MBPP: test split 11-510 of mbpp.jsonl, name and all asserts in the prompt
    _evalplus_family(id="mbpp_leaderboard", benchmark="mbpp", dataset="mbpp", task_ids="11-510", n_tasks=500,
                     task_prompt=MBPP_TASK, stop_base=_MBPP_BASE_STOP, tests="asserts", plus=False,
                     task_timeout_s=10.0),
    _evalplus_family(id="mbpp_plus", benchmark="mbpp_plus", dataset="mbpp_plus", task_ids="all", n_tasks=378,
                     stop_base=_MBPP_BASE_STOP, tests="evalplus", plus=True),
)}
# what a spec (or a criterion) may change, each honoured by the code that scores; the rest is fixed
_OVERRIDABLE = {"prompt_mode", "n", "temperature", "top_p", "max_new_tokens", "stop_base", "stop_instruct",
                "instruction_prefix", "response_prefix", "min_time_limit_s", "gt_time_factor", "task_timeout_s",
                "n_tasks"}


def _same_kind(current: Any, value: Any) -> bool:
    if isinstance(current, tuple):
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if isinstance(current, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return type(value) is type(current)


def get(protocol_id: str) -> Protocol:
    """The official protocol ``protocol_id``; an unknown id is a one-line error."""
    if protocol_id not in PROTOCOLS:
        near = difflib.get_close_matches(str(protocol_id).lower().replace("+", "_plus"), PROTOCOLS, n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown protocol {protocol_id!r} (known: {', '.join(PROTOCOLS)}){hint}")
    return PROTOCOLS[protocol_id]


def resolve(protocol_id: str, *, data_sha256: str | None = None, overrides: dict[str, Any] | None = None) -> Protocol:
    """The effective protocol: the official one with a user-pinned data file and spec overrides.

    A data sha256 other than the project's pin makes ``data_pinned_by`` "user"; every change
    shows in the digest, so results of a changed protocol never pass for the official one.
    """
    p = get(protocol_id)
    if data_sha256 is not None and not p.accepts_data(data_sha256):
        if len(data_sha256) != 64 or any(c not in "0123456789abcdef" for c in data_sha256):
            raise ValueError(f"protocol {protocol_id}: data sha256 {data_sha256!r} is not 64 lowercase hex digits")
        p = replace(p, data_sha256=data_sha256, data_sha256_decompressed=None, data_pinned_by="user")
    changes: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if key not in _OVERRIDABLE:
            raise ValueError(f"protocol {protocol_id}: cannot override {key!r} (overridable: "
                             f"{', '.join(sorted(_OVERRIDABLE))})")
        current = getattr(p, key)
        if key == "prompt_mode" and value not in ("auto", "base", "instruct"):
            raise ValueError(f"protocol {protocol_id}: prompt_mode {value!r} is not auto, base or instruct")
        if not _same_kind(current, value):
            raise ValueError(f"protocol {protocol_id}: override {key}={value!r} must be a {type(current).__name__}")
        changes[key] = tuple(value) if isinstance(current, tuple) else float(value) if isinstance(current, float) else value
    return replace(p, **changes) if changes else p


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between two protocol dicts, one line a key: ``max_new_tokens 512 -> 768``."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if a != b:
            out.append(f"{key} {json.dumps(a) if isinstance(a, (list, dict)) else a} -> "
                       f"{json.dumps(b) if isinstance(b, (list, dict)) else b}")
    return out
