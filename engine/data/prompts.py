"""Prompt strategies for HumanEval and MBPP, rendered exactly as they are sent.

Strategies: ``standard``; ``few-shot`` (MBPP: the paper's tasks 2, 3, 4; HumanEval: two
fixed examples written here, none from any benchmark); ``asserts`` (MBPP: the function's
name and the test asserts in the prompt, 5% -> 76.2% in the original's measurements).
With a chat template in the tokenizer the prompt is a rendered conversation; without,
a completion prompt. The returned text is what the backend sees, so it is what gets
recorded (and what preference pairs must store).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from engine.data.humaneval import Problem
from engine.data.protocols import Protocol

STRATEGIES = ("standard", "few-shot", "asserts")
_HE_SHOTS = (
    ('def double_all(xs: list) -> list:\n    """Return a new list with every element of xs doubled.\n'
     '    >>> double_all([1, 2])\n    [2, 4]\n    """\n', "    return [2 * x for x in xs]\n"),
    ('def count_vowels(s: str) -> int:\n    """Count the vowels (a, e, i, o, u, any case) in s.\n'
     '    >>> count_vowels("Hello")\n    2\n    """\n', '    return sum(ch in "aeiouAEIOU" for ch in s)\n'),
)
_HE_ASK = "Complete the following Python function. Reply with the whole function in one ```python code block.\n"


@dataclass(frozen=True)
class Prompt:
    text: str  # exactly what is sent to the backend
    chat: bool  # rendered through the chat template
    body: bool  # a completion continues inside the function body (HumanEval, completion mode)
    template_hash: str  # sha256 of the chat template, or of the literal "completion"


def template_hash(tokenizer: Any) -> str:
    tpl = getattr(tokenizer, "chat_template", None)
    return hashlib.sha256((tpl if isinstance(tpl, str) else "completion").encode()).hexdigest()


def _mbpp_task(p: Problem, with_tests: bool) -> str:
    from engine.data.mbpp import tests_of

    if not with_tests:
        return f"{p.text}\n"
    asserts = "\n".join(tests_of(p)["asserts"])
    return (f"{p.text}\nThe function must be named `{p.entry_point}`. "
            f"Your code should pass these tests:\n\n{asserts}\n")


def _messages(benchmark: str, problem: Problem, strategy: str, shots: list[Problem]) -> list[dict[str, str]]:
    msgs: list[dict[str, str]] = []
    if benchmark.startswith("humaneval"):
        if strategy == "few-shot":
            for prompt, body in _HE_SHOTS:
                msgs += [{"role": "user", "content": f"{_HE_ASK}```python\n{prompt}```"},
                         {"role": "assistant", "content": f"```python\n{prompt}{body}```"}]
        return [*msgs, {"role": "user", "content": f"{_HE_ASK}```python\n{problem.prompt}```"}]
    ask = "You are an expert Python programmer. Write a Python function for this task.\n\n"
    if strategy == "few-shot":
        for s in shots:
            msgs += [{"role": "user", "content": ask + _mbpp_task(s, True)},
                     {"role": "assistant", "content": f"```python\n{s.canonical_solution.strip()}\n```"}]
    return [*msgs, {"role": "user", "content": ask + _mbpp_task(problem, strategy != "standard")}]


def _completion(benchmark: str, problem: Problem, strategy: str, shots: list[Problem]) -> str:
    if benchmark.startswith("humaneval"):
        head = "".join(p + b + "\n\n" for p, b in _HE_SHOTS) if strategy == "few-shot" else ""
        return head + problem.prompt
    head = "".join(f'"""\n{_mbpp_task(s, True)}"""\n{s.canonical_solution.strip()}\n[DONE]\n\n'
                   for s in shots) if strategy == "few-shot" else ""
    return head + f'"""\n{_mbpp_task(problem, strategy != "standard")}"""\n'


def build(benchmark: str, problem: Problem, strategy: str, tokenizer: Any,
          shots: list[Problem] | None = None, mode: str = "auto") -> Prompt:
    """The prompt for one problem; ``shots`` are MBPP's few-shot problems (task_ids 2, 3, 4).
    ``mode``: ``auto`` (chat when the tokenizer has a template), ``chat`` or ``completion``."""
    if mode not in ("auto", "chat", "completion"):
        raise ValueError(f"unknown prompt mode {mode!r} (expected auto, chat or completion)")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown prompt strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})")
    he = benchmark.startswith("humaneval")
    if strategy == "asserts" and he:
        raise ValueError("prompt strategy 'asserts' is for MBPP (HumanEval's examples are in its docstrings)")
    if strategy == "few-shot" and not he and not shots:
        raise ValueError("MBPP few-shot needs the shot problems (task_ids 2, 3, 4 of the prompt split)")
    shots = list(shots or [])
    has_template = isinstance(getattr(tokenizer, "chat_template", None), str)
    if mode == "chat" and not has_template:
        raise ValueError("prompt mode 'chat' but the tokenizer has no chat template")
    chat = has_template and mode != "completion"
    if chat:
        text = tokenizer.apply_chat_template(_messages(benchmark, problem, strategy, shots), tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = _completion(benchmark, problem, strategy, shots)
    return Prompt(text=text, chat=chat, body=he and not chat,
                  template_hash=template_hash(tokenizer) if chat else template_hash(None))


_SPLITTER = "-[[]]-this-is-really-our-highest-priority-[[]]-"  # evalplus's marker where the reply begins


def for_protocol(protocol: Protocol, task_prompt: str, tokenizer: Any) -> Prompt:
    """The text evalplus's codegen sends: a base model gets the task prompt stripped plus a newline;
    a model with a chat template (``prompt_mode`` auto or instruct) gets the instruction, the task in
    a code fence, and the start of the reply up to an open ```python fence."""
    has_template = isinstance(getattr(tokenizer, "chat_template", None), str)
    mode = protocol.prompt_mode
    if mode == "instruct" and not has_template:
        raise ValueError(f"protocol {protocol.id}: prompt_mode instruct but the tokenizer has no chat template")
    if mode == "base" or not has_template:
        return Prompt(text=task_prompt.strip() + "\n", chat=False, body=True, template_hash=template_hash(None))
    user = f"{protocol.instruction_prefix}\n```\n{task_prompt.strip()}\n```\n"
    reply = f"{protocol.response_prefix}\n```python\n{_SPLITTER}\n```\n"
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
                                         tokenize=False).split(_SPLITTER)[0]
    return Prompt(text=text, chat=True, body=False, template_hash=template_hash(tokenizer))
