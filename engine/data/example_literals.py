"""Example literals: the values a problem's examples are written with (docstring examples,
doctests, test asserts, prose tables), read from any text in one normal form, and each call's
arguments paired with the result written after it. Paraphrases reword a statement but keep its
examples, so decontamination matches these whatever the function is called (engine/data/decontam.py)."""

from __future__ import annotations

import ast
import math
import re
from typing import Any

QUOTED = re.compile(r"""(?<![\w'"])(['"])([^'"\n]*)\1""")  # a quoted literal, not an apostrophe (it's)
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.])")
BRACKET = re.compile(r"[()\[\]{}]")
LITERAL_NEST = 4  # brackets inside brackets: deeper spans are not read as literals
CONSTANT = re.compile(r"(?<![\w.])(?:True|False|None)(?![\w.])")
# what may stand between a call and the result written after it (a doctest puts it on the next line)
RESULT_SEP = re.compile(r"[ \t]*(?:==>|==|=>|->|\u279e|\u2192|=|:)?[ \t]*\n?[ \t]*(?:(?:returns?|gives?|is|should"
                        r" (?:be|return|give)|yields?|outputs?|evaluates to)[ \t]+)?")
LITERAL_CHARS = re.compile(r"[\s\d.,:+\-eEjx'\"()\[\]{}TrueFalsNon]*")  # a bracketed span worth literal_eval


def literal_key(value: Any) -> Any:
    """A literal in one form whatever its spelling: quotes and spacing gone, tuple = list, 1 = 1.0."""
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(literal_key(v) for v in value))
    if isinstance(value, (set, frozenset)):
        return ("set", frozenset(literal_key(v) for v in value))
    if isinstance(value, dict):
        return ("map", frozenset(("seq", (literal_key(k), literal_key(v))) for k, v in value.items()))
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return ("float", repr(value))  # as written: [1.0, 2.0] is not [1, 2]
    return ("const", repr(value))  # True, None, bytes, inf: kept apart from the numbers they equal


def literal_size(key: Any) -> int:
    """Characters a literal takes to write (items and their separators): how specific it is."""
    if isinstance(key, (str, int)):
        return len(key) + 2 if isinstance(key, str) else len(repr(key))  # a string with its quotes
    if key[0] in ("const", "float"):
        return len(key[1]) if key[0] == "float" else 0
    return sum(literal_size(k) + 1 for k in key[1])


def telling(key: Any) -> bool:
    """A literal that can tell examples apart: 3+ characters of text or of a number, or 2+ items."""
    if isinstance(key, (str, int)):
        return len(key if isinstance(key, str) else repr(key)) >= 3
    if key[0] == "float":
        return not float(key[1]).is_integer() and literal_size(key) >= 3  # 0.5 tells, 2.0 does not
    return key[0] != "const" and len(key[1]) >= 2


def is_pair(key: Any) -> bool:
    """A call's arguments with its result (:func:`literals`)."""
    return isinstance(key, tuple) and key[0] == "pair"


def literals(text: str) -> set[Any]:
    """The telling literal values written in ``text`` (prose, doctests, asserts, tables): quoted strings,
    numbers, every bracketed span that is a Python literal (call arguments as one tuple too), and each call's
    arguments with the result written after it (``f(3, 7) == 1``, ``>>> f(3, 7)`` + ``1``, ``f(3, 7) -> 1``)
    as one ``pair``, whatever the function is called."""
    at: dict[int, Any] = {m.start(): literal_key(m.group(2)) for m in QUOTED.finditer(text)}  # start -> value
    at.update((m.start(), literal_key(float(n) if any(c in n for c in ".eE") else int(n)))
              for m in NUMBER.finditer(text) if (n := m.group()))
    at.update((m.start(), literal_key(ast.literal_eval(m.group()))) for m in CONSTANT.finditer(text))
    masked = QUOTED.sub(lambda m: m.group(1) + "x" * len(m.group(2)) + m.group(1), text)  # brackets in strings
    calls: list[tuple[int, Any]] = []  # (end, arguments) of spans written as a call
    opened: list[list[int]] = []  # [start, nesting depth inside]
    for m in BRACKET.finditer(masked):
        if m.group() in "([{":
            opened.append([m.start(), 0])
            continue
        if not opened:
            continue
        start, inner = opened.pop()
        if opened:
            opened[-1][1] = max(opened[-1][1], inner + 1)
        span = masked[start:m.end()]
        # a character lies in at most LITERAL_NEST read spans: linear time whatever the nesting of a hostile row
        if inner >= LITERAL_NEST or len(span) > 2000 or not LITERAL_CHARS.fullmatch(span) \
                or not any(c.isdigit() or c in "'\"" for c in span):
            continue
        try:
            at[start] = literal_key(ast.literal_eval(text[start:m.end()]))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if span[0] == "(" and start and (masked[start - 1].isalnum() or masked[start - 1] == "_"):
            calls.append((m.end(), at[start]))
    found = set(at.values())
    for end, args in calls:
        result = at.get(RESULT_SEP.match(text, end).end())  # type: ignore[union-attr]  # matches the empty string
        if result is not None:
            found.add(("pair", (args, result)))
    return {k for k in found if telling(k)}
