"""Turn a model's raw output into the code that gets executed (REFERENCE.md, Evaluation protocol).

Order: keep the text after ``</think>``; cut at the first chat trailer line (``Human:``,
``Assistant:``, ``User:``, ``###``) or few-shot ``[DONE]`` marker; take the code of a fenced
block (fence lines dropped); in completion mode for a function body, stop at the first
line back at column 0 (the body has ended: Codex's stop sequences). The raw text is kept
by the caller beside the cleaned one.
"""

from __future__ import annotations

import ast
import re

TRAILERS = ("Human:", "Assistant:", "User:", "###", "[DONE]")
_FENCE = re.compile(r"^\s*```")


def strip_think(text: str) -> str:
    """Everything after the last ``</think>`` (reasoning models), else the text."""
    return text.rsplit("</think>", 1)[1] if "</think>" in text else text


def cut_trailers(text: str) -> str:
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.lstrip().startswith(TRAILERS):
            return "\n".join(lines[:i])
    return text


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return bool(code.strip())


def extract_fenced(text: str) -> str:
    """The code of the first fenced block; fence lines dropped. Text that already is code
    before a closing fence (a prefilled opening) is kept as it is."""
    lines = text.split("\n")
    fences = [i for i, line in enumerate(lines) if _FENCE.match(line)]
    if not fences:
        return text
    first = fences[0]
    before = "\n".join(lines[:first])
    if _parses(before) and not lines[first].strip().removeprefix("```").strip():
        return before  # the reply opened inside a code block and this fence closes it
    end = fences[1] if len(fences) > 1 else len(lines)
    return "\n".join(lines[first + 1:end])


def cut_body(text: str) -> str:
    """A completion of a function body ends at the first non-blank line at column 0."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if i > 0 and line.strip() and not line[0].isspace():
            return "\n".join(lines[:i])
    return text


def drop_demo_code(code: str) -> str:
    """Without the top-level statements a reply adds to show its code off: bare expressions
    (``print(f(3))``), its own asserts, and ``if __name__ == "__main__":`` blocks. Code that
    does not parse is returned as it is (the sandbox reports the syntax error)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return code

    def demo(node: ast.stmt) -> bool:
        if isinstance(node, ast.Assert) or (isinstance(node, ast.Expr) and not isinstance(node.value, ast.Constant)):
            return True
        return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)

    lines = code.split("\n")
    for node in reversed(tree.body):
        if demo(node):
            del lines[node.lineno - 1:node.end_lineno]
    return "\n".join(lines)


def clean(raw: str, *, chat: bool, body: bool, sanitize: bool = False) -> str:
    """The code to run from a raw completion; ``body`` when the prompt ends inside a function;
    ``sanitize`` also drops the reply's demo code (an opt-in beyond the reference protocol)."""
    text = cut_trailers(strip_think(raw))
    text = extract_fenced(text)
    if body and not chat:
        text = cut_body(text)
    if sanitize:
        text = drop_demo_code(text)
    return text.rstrip() + "\n"
