"""Turn a model's raw output into the code that gets executed.

Evaluation (``evalplus_solution``) does what evalplus 0.3.1's codegen does: cut at the first
stop string, tabs to spaces, the prompt in front for a base model, then ``sanitize`` (evalplus's
sanitizer, reimplemented on Python's ast: the longest parsing span, reduced to the entry point
and what it reaches). Training-time stages use ``clean``: keep the text after ``</think>``,
cut at the first chat trailer line (``Human:``, ``Assistant:``, ``User:``, ``###``) or few-shot
``[DONE]`` marker, take the code of a fenced block, and in completion mode for a function body
stop at the first line back at column 0.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize

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


def clean(raw: str, *, chat: bool, body: bool) -> str:
    """The code to run from a raw completion (training-time stages); ``body`` when the prompt ends
    inside a function. Evaluation uses ``evalplus_solution`` instead."""
    text = cut_trailers(strip_think(raw))
    text = extract_fenced(text)
    if body and not chat:
        text = cut_body(text)
    return text.rstrip() + "\n"


# -- evalplus's sanitizer (evalplus 0.3.1 sanitize.py), on Python's ast instead of tree-sitter ----------


def _parses_evalplus(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, MemoryError, ValueError, RecursionError):
        return False
    return True


def code_extract(text: str) -> str:
    """The span of two or more lines with the most non-blank lines that parses (the first such span).

    Same answer as evalplus's quadratic scan, found by trying each start's longest end first.
    """
    lines = text.split("\n")
    filled = [1 if line.strip() else 0 for line in lines]
    suffix = [0] * (len(lines) + 1)
    for i in range(len(lines) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + filled[i]
    best, pair = 0, (0, 0)
    for i in range(len(lines)):
        if suffix[i] <= best:
            break  # no span starting here or later can beat it
        count = suffix[i]
        for j in range(len(lines) - 1, i, -1):
            if _parses_evalplus("\n".join(lines[i:j + 1])):
                top = count  # the longest parsing span from i; the earliest end with as many lines wins
                for k in range(i + 1, j + 1):
                    if sum(filled[i:k + 1]) == top and _parses_evalplus("\n".join(lines[i:k + 1])):
                        j = k
                        break
                if top > best:
                    best, pair = top, (i, j)
                break
            count -= filled[j]
    return "\n".join(lines[pair[0]:pair[1] + 1])


def _names(node: ast.AST) -> set[str]:
    """Every identifier in a definition (tree-sitter's ``identifier`` nodes)."""
    out: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, ast.arg):
            out.add(n.arg)
        elif isinstance(n, ast.keyword) and n.arg:
            out.add(n.arg)
        elif isinstance(n, ast.alias):
            out.update(n.name.split("."))
            if n.asname:
                out.add(n.asname)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            out.update(n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            out.add(n.name)
        elif isinstance(n, (ast.MatchAs, ast.MatchStar)) and n.name:
            out.add(n.name)
        elif isinstance(n, ast.ImportFrom) and n.module:
            out.update(n.module.split("."))
    return out


def _assigned_name(node: ast.Assign | ast.AnnAssign) -> str | None:
    """tree-sitter's ``get_definition_name`` of an assignment: its first direct identifier child
    (the target if it is a plain name, else the value if that is one)."""
    target = node.targets[0] if isinstance(node, ast.Assign) else node.target
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(node, ast.Assign) and len(node.targets) > 1:
        return None  # `a.b = c = 1`: the right side is another assignment
    return node.value.id if isinstance(node.value, ast.Name) else None  # an annotation is wrapped in a type node


def _block_end(lines: list[str], node: ast.stmt) -> tuple[int, int]:
    """(line index, column) where tree-sitter ends a def/class: a comment on its last line and the
    comment lines after it that are indented at least as deep as its body belong to it."""
    last, col = node.end_lineno - 1, node.end_col_offset  # type: ignore[operator]
    rest = lines[last].encode()[col:].decode(errors="ignore")
    if rest.lstrip().startswith("#"):
        col = len(lines[last].encode())
    body = node.body[0]  # type: ignore[attr-defined]
    if body.lineno == node.lineno:
        return last, col
    depth = len(lines[body.lineno - 1]) - len(lines[body.lineno - 1].lstrip())
    for i in range(last + 1, len(lines)):
        stripped = lines[i].strip()
        if not stripped:
            continue
        if not stripped.startswith("#") or len(lines[i]) - len(lines[i].lstrip()) < depth:
            break
        last, col = i, len(lines[i].encode())
    return last, col


def _definitions(code: str) -> tuple[list[str], list[tuple[str | None, str, set[str]]]]:
    """(import statements, [(name, text, names used)]) as evalplus keeps them, in source order."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, MemoryError, ValueError, RecursionError):
        return [], []
    lines = code.split("\n")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line.encode()) + 1)
    data = code.encode()

    def text(node: ast.stmt, end: tuple[int, int] | None = None) -> str:
        last, col = end or (node.end_lineno - 1, node.end_col_offset)  # type: ignore[operator]
        return data[starts[node.lineno - 1] + node.col_offset:starts[last] + col].decode(errors="replace")

    imports, defs, seen = [], [], set()
    for node in tree.body:
        if isinstance(node, ast.Import) or isinstance(node, ast.ImportFrom) and node.module != "__future__":
            imports.append(text(node))
            continue
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.decorator_list or node.name in seen:
                continue  # tree-sitter wraps a decorated one in another node type, which evalplus skips
            if not isinstance(node, ast.ClassDef) and not any(isinstance(n, ast.Return) for n in ast.walk(node)):
                continue
            name: str | None = node.name
            body = text(node, _block_end(lines, node))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            name = _assigned_name(node)
            if name in seen:
                continue
            body = text(node)
        else:
            continue
        seen.add(name)  # type: ignore[arg-type]
        defs.append((name, body, _names(node)))
    return imports, defs


def sanitize(code: str, entrypoint: str | None = None) -> str:
    """evalplus's ``sanitize``: the longest parsing span, reduced to its imports and the top-level
    definitions the entry point reaches (functions only if they return something); if that leaves
    nothing, the span itself."""
    extracted = code_extract(code)
    imports, defs = _definitions(extracted)
    keep = {name for name, _, _ in defs}
    if entrypoint:
        deps = {name: used for name, _, used in defs}
        keep, queue = {entrypoint}, [entrypoint]
        while queue:
            for dep in deps.get(queue.pop(0), ()):
                if dep not in keep:
                    keep.add(dep)
                    queue.append(dep)
    out = "\n".join([*imports, *(body for name, body, _ in defs if name in keep)]).strip()
    return out or extracted


def evalplus_solution(raw: str, *, prompt: str, stops: tuple[str, ...] | list[str], entry_point: str) -> str:
    """The program evalplus's codegen saves for a raw generation: cut at the first stop sequence
    (10,000 characters at most, as evalplus's decoders do), tabs as four spaces, the prompt in
    front for a base model (``prompt``; "" for instruct), then ``sanitize``."""
    cut = min([raw.index(s) for s in stops if s in raw] + [10000])
    return sanitize(prompt + raw[:cut].replace("\t", "    "), entry_point)


def normalize_code(code: str) -> str:
    """Code with comments, docstrings and layout normalised (the same program, spelled once)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        words: list[str] = []
        try:  # tokens without comments, up to where the tokenizer gives up
            for t in tokenize.generate_tokens(io.StringIO(code).readline):
                if t.type != tokenize.COMMENT and t.string.strip():
                    words.append(t.string)
        except (tokenize.TokenError, SyntaxError):
            pass
        return " ".join(words) or re.sub(r"\s+", " ", code).strip()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)
