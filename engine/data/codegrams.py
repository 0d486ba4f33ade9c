"""Code fingerprints for decontamination: n-grams over a normalised Python token stream.

Word n-grams see code as punctuation and short names, so a solution copied without its
docstring, or with its names changed, goes unseen. Here code is lexed (leniently: rows mix
prose, markdown and fragments that do not parse) into a stream in which what a disguise
changes cheaply is gone and what it must keep stays:

* user identifiers become ``ID`` (renaming), numbers ``NUM`` and strings ``STR`` (changed
  literals); keywords, builtins, well-known modules and the methods of builtin types and
  of those modules stay, being the part a working copy cannot rename;
* comments, docstrings and other string statements, type annotations (parameters, return,
  variables), ``self.``/``self`` parameters (a function wrapped in a class) and trailing
  commas are dropped;
* layout is reduced to one ``;`` per logical line, none after a block's colon, none inside
  brackets: re-indenting, re-wrapping or one-lining ``if x: return y`` changes nothing.

The n-grams of that stream are compared by coverage: how much of an evaluation solution's
n-grams (weighted by rarity across the evaluation sets) a training row contains.
"""

from __future__ import annotations

import builtins
import keyword
import math
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from engine.data.codeshape import canonical

_MODULES = ("math", "re", "collections", "itertools", "functools", "heapq", "string", "bisect", "operator",
            "statistics", "random", "copy", "sys", "hashlib", "fractions", "decimal", "datetime", "cmath")


def _vocabulary() -> tuple[frozenset[str], frozenset[str]]:
    """(builtin names and keywords, names kept after a dot): what a renamer cannot touch."""
    import importlib

    bare = set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins))
    attrs: set[str] = set()
    for t in (str, bytes, list, dict, set, frozenset, tuple, int, float, complex):
        attrs |= {a for a in dir(t) if not a.startswith("_")}
    for name in _MODULES:
        attrs |= {a for a in dir(importlib.import_module(name)) if not a.startswith("_")}
    return frozenset(bare), frozenset(attrs)


BARE, ATTRS = _vocabulary()
MODULES = BARE | frozenset(_MODULES)
_LEX = re.compile(r'''
  (?P<margin>(?m:^)[ \t]*(?:>>>|\.\.\.|>+|\d+[.:)|]?)(?=[ \t]))  # REPL prompts, quote marks, line numbers
| (?P<str>(?:[rRbBuUfF]{1,2}(?=['"]))?(?:"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))
| (?P<comment>\#[^\n]*)
| (?P<num>(?:0[xXoObB][0-9a-fA-F_]+|\d[\d_]*\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)[jJ]?)
| (?P<name>[A-Za-z_]\w*)
| (?P<cont>\\\r?\n)
| (?P<nl>\n)
| (?P<op>\*\*=?|//=?|>>=?|<<=?|->|:=|\.\.\.|[-+*/%&|^@<>=!]=|[-+*/%&|^~<>=@.,:;()\[\]{}])
| (?P<skip>[\s\S])
''', re.X)
OPEN, CLOSE = "([{", ")]}"
# words that start a statement and never continue an expression across lines
STATEMENT_ONLY = frozenset("def class return import while try elif raise pass break continue assert del global "
                           "nonlocal with except finally".split())


def raw_tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) pairs; comments, line continuations, margins (``>>>``, ``12.``), unmatched quotes
    and stray characters dropped."""
    return [(m.lastgroup, m.group()) for m in _LEX.finditer(text)
            if m.lastgroup not in ("skip", "comment", "cont", "margin")]


def _skip_to(toks: list[tuple[str, str]], i: int, stops: str) -> int:
    """Index of the first token from ``i`` that is one of ``stops`` (or closes the bracket) at this depth."""
    depth = 0
    while i < len(toks):
        kind, tok = toks[i]
        if kind == "nl" and depth == 0:
            return i
        if kind == "op":
            if tok in CLOSE:
                if depth == 0:
                    return i
                depth -= 1
            elif tok in OPEN:
                depth += 1
            elif depth == 0 and tok in stops:
                return i
        i += 1
    return i


def _callable(tok: str) -> bool:
    """Whether '(' after ``tok`` is a call (or a def's parameters), not a grouping parenthesis."""
    return tok in (")", "]", "STR") or (tok.isidentifier() and not keyword.iskeyword(tok))


def _string_body(tok: str) -> str:
    """A string literal's text, its common escapes undone (code kept in a string or JSON is code)."""
    quoted = tok.lstrip("rRbBuUfF")
    body = quoted[3:-3] if quoted[:3] in ('"""', "'''") else quoted[1:-1]
    return body.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"').replace("\\'", "'")


def normalise(text: str, unpack: bool = False) -> list[str]:
    """The normalised token stream of ``text`` (any mix of prose and code; see the module doc).

    ``unpack``: multi-line string literals are normalised too, their streams appended, so that a
    row cannot hide a solution in a string (``SOURCE = \"\"\"def f...\"\"\"``, a JSON-escaped field).
    """
    toks = raw_tokens(text)
    out: list[str] = []
    inner: list[str] = []
    depth, params, expect_params, line_start, prev = 0, -1, False, True, ""
    grouping: list[bool] = []         # per open bracket: a grouping parenthesis (not emitted)
    i = 0
    while i < len(toks):
        kind, tok = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else "\n"
        i += 1
        if kind == "nl" and depth and i < len(toks) and toks[i][1] in STATEMENT_ONLY:
            depth, params, grouping = 0, -1, []  # an unclosed bracket (prose, a cut file) ends here
        if kind == "nl" or (tok == ";" and kind == "op"):
            if depth == 0:
                if out and out[-1] not in (";", ":"):
                    out.append(";")
                line_start = True
            prev = ""
            continue
        if kind == "str":
            if unpack and ("\n" in tok or "\\n" in tok):
                inner.append(_string_body(tok))
            if line_start and depth == 0 and nxt in ("\n", ";"):
                continue              # a docstring or other string statement
            tok = "STR"
        elif kind == "num":
            tok = "NUM"
        elif kind == "name":
            if tok in ("self", "cls") and prev != "." and nxt in (".", ",", ")"):
                i += nxt != ")"       # self.x -> x, (self, a) -> (a)
                prev = ""
                continue
            expect_params = tok == "def" or (expect_params and tok != "(")
            kept = ATTRS if prev == "." else MODULES if nxt == "." or prev in ("import", "from") else BARE
            tok = tok if tok in kept else "ID"
        elif tok == "->" and depth == 0:
            i = _skip_to(toks, i, ":")
            continue
        elif tok == ":" and depth == params:
            i = _skip_to(toks, i, ",=")
            continue
        elif tok == ":" and depth == 0 and out[-1:] == ["ID"] and (len(out) == 1 or out[-2] in (";", ":")):
            i = _skip_to(toks, i, "=")  # x: int = 0
            continue
        elif tok in OPEN:
            depth += 1
            if expect_params and tok == "(":
                params, expect_params = depth, False
            grouping.append(tok == "(" and not (out and _callable(out[-1])))
            if grouping[-1]:          # (a + b), return (x, y): parentheses a reformat adds or drops
                prev = tok
                continue
        elif tok in CLOSE:
            if out and out[-1] == ",":
                out.pop()             # trailing comma
            if depth == params:
                params = -1
            depth = max(0, depth - 1)
            if grouping and grouping.pop():
                prev = tok
                continue
        prev = toks[i - 1][1]
        out.append(tok)
        line_start = tok == ":" and depth == 0  # def f(): "doc" on one line
    for body in inner:
        out += [";", *normalise(canonical(body), unpack=True)]
    return out


def features(stream: list[str], n: int) -> list[tuple[tuple[str, ...], int]]:
    """(feature, position) pairs: token n-grams, or with ``n`` 0 whole statements and block headers
    (these survive statements reordered or junk put between them)."""
    if n:
        return [(tuple(stream[k:k + n]), k) for k in range(len(stream) - n + 1)]
    out, start = [], 0
    for k, tok in enumerate(stream):
        if tok in (";", ":"):
            out.append((tuple(stream[start:k + 1]), start))
            start = k + 1
    return out


def code_shapes(text: str) -> list[list[str]]:
    """The streams a unit is indexed as: as written and canonical (codeshape.py; a row that does not
    parse meets the former)."""
    return [normalise(text), normalise(canonical(text))]


@dataclass(frozen=True)
class CodeMatch:
    unit: int
    coverage: float    # share of the unit's gram weight found in the row
    weight: float      # that weight (nats of rarity): how much structure the match carries
    grams: int         # distinct grams matched


class CodeIndex:
    """Code n-grams of evaluation solutions; :meth:`matches` scores a row against each of them.
    (``shapes_of`` turns a unit into the token streams it is indexed as: any token stream works,
    the statements' words too.)

    A unit is one piece of reference code (a problem's prompt + solution, or its solution
    alone), as written and in canonical shape; ``owners[u]`` is the item it belongs to, ``tasks[u]`` that item's task id (variants
    of one benchmark share it). A gram's weight is its rarity across
    problems, log(1 + problems / problems holding it); grams in more than ``max_df`` of the
    problems are boilerplate and not indexed. Matches must lie within a window a few times
    the unit's length, so a long row does not assemble a short solution from scattered pieces.
    """

    def __init__(self, units: list[str], owners: list[int], tasks: list[str], n: int = 8,
                 max_df: float = 0.02, shapes_of: Callable[[str], list[list[str]]] | None = None) -> None:
        shapes: dict[tuple[tuple[str, ...], int], str] = {}
        for text, owner, task in zip(units, owners, tasks, strict=True):
            for shape in (shapes_of or code_shapes)(text):
                shapes.setdefault((tuple(shape), owner), task)
        streams = [list(s) for s, _ in shapes]
        self.n, self.owners = n, [o for _, o in shapes]
        tasks = list(shapes.values())
        unit_grams = [{g for g, _ in features(s, n)} for s in streams]
        problems = len(set(tasks)) or 1  # HumanEval/0 and its HumanEval+ copy are one problem
        holders: dict[tuple[str, ...], set[str]] = defaultdict(set)
        for g, task in zip(unit_grams, tasks, strict=True):
            for gram in g:
                holders[gram].add(task)
        limit = max(2.0, max_df * problems)
        self.weight = {g: math.log(1 + problems / len(o)) for g, o in holders.items() if len(o) <= limit}
        self.postings: dict[tuple[str, ...], list[int]] = defaultdict(list)
        self.total: list[float] = []
        self.window = [3 * len(s) + 40 for s in streams]
        for u, g in enumerate(unit_grams):
            kept = [x for x in g if x in self.weight]
            for x in kept:
                self.postings[x].append(u)
            self.total.append(math.fsum(self.weight[x] for x in kept))  # exact: no hash-order noise

    def matches(self, stream: list[str], min_coverage: float) -> list[CodeMatch]:
        """Units whose grams the row's normalised ``stream`` covers at least ``min_coverage`` of, in one window."""
        found: dict[int, dict[tuple[str, ...], int]] = defaultdict(dict)  # unit -> gram -> first position
        for gram, k in features(stream, self.n):
            for u in self.postings.get(gram, ()):
                found[u].setdefault(gram, k)
        out = []
        for u, hit in found.items():
            if math.fsum(self.weight[g] for g in hit) < min_coverage * self.total[u]:
                continue
            weight, count = self._densest(u, hit)
            if weight >= min_coverage * self.total[u]:
                out.append(CodeMatch(u, weight / self.total[u], weight, count))
        return out

    def _densest(self, u: int, hit: dict[tuple[str, ...], int]) -> tuple[float, int]:
        """(weight, grams) of the matched grams inside the best window of the unit's size."""
        pos = sorted((k, self.weight[g]) for g, k in hit.items())
        best, lo, acc = (0.0, 0), 0, 0.0
        for hi, (k, w) in enumerate(pos):
            acc += w
            while k - pos[lo][0] > self.window[u]:
                acc -= pos[lo][1]
                lo += 1
            best = max(best, (acc, hi - lo + 1))
        return best
