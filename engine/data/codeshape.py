"""Canonical code shape: the rewrites a disguise makes cheaply are undone before fingerprinting.

Token n-grams (codegrams.py) survive renaming and re-layout, but not a change of structure
that keeps the program: a comprehension unrolled into an accumulating loop, junk statements
between the real ones, a result stored in a temporary before it is returned. Python that
parses (the whole row, its dedented text, or each fenced block) is rewritten to one
canonical form, on the evaluation side and the training side alike:

* dead code goes: assignments to names nothing reads, ``pass``, bare constants and names,
  ``print(...)`` calls, ``if False:`` blocks;
* an accumulating loop (``acc = []`` / ``set()`` / ``{}`` / ``0`` then ``for ...: [if ...:]
  acc.append(e)`` / ``.add(e)`` / ``acc[k] = v`` / ``acc += e``) becomes the comprehension
  (or ``sum``) it spells, and ``[...]`` as a call's only argument a generator;
* ``x = value`` followed by ``return x`` (x read nowhere else) becomes ``return value``.

Nothing here executes code; a row that does not parse is left as it is.
"""

from __future__ import annotations

import ast
import re
import textwrap
import warnings
from collections import Counter

MAX_PARSE = 200_000  # characters: a larger row is fingerprinted as written
LOOKBACK = 8  # statements between an accumulator's start and its loop
FENCE = re.compile(r"(```[ \t]*(?:python|py|python3)?[ \t]*\n)([\s\S]*?)(\n[ \t]*```)")
EMPTY = {"list": "[]", "set": "set()", "dict": "{}"}


def canonical(text: str) -> str:
    """``text`` with its Python canonicalised (the whole of it, or each fenced block); else unchanged."""
    whole = rewrite(text)
    if whole is not None:
        return whole
    return FENCE.sub(lambda m: m.group(1) + (rewrite(m.group(2)) or m.group(2)) + m.group(3), text)


def rewrite(src: str) -> str | None:
    """The canonical source of ``src`` (``src`` itself when nothing changes), None when it does not parse."""
    if len(src) > MAX_PARSE or not src.strip():
        return None
    for candidate in (src, textwrap.dedent(src)):
        try:
            with warnings.catch_warnings():  # invalid escapes in a row's strings are the row's business
                warnings.simplefilter("ignore")
                tree = ast.parse(candidate)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        try:
            changed = _Canon(tree).run()
            return ast.unparse(tree) + "\n" if changed else src
        except (RecursionError, ValueError, AttributeError, TypeError):
            return src
    return None


def _loads(tree: ast.AST) -> Counter[str]:
    """How often each name is read (global/nonlocal declarations count as reads)."""
    out: Counter[str] = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Store):
            out[node.id] += 1
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            out.update(node.names)
    return out


def _stores(stmt: ast.stmt) -> list[str] | None:
    """The plain names a simple assignment binds (None: not one, or it binds more than names)."""
    if isinstance(stmt, ast.Assign):
        targets = stmt.targets
    elif isinstance(stmt, (ast.AugAssign, ast.AnnAssign)):
        targets = [stmt.target]
    else:
        return None
    names: list[str] = []
    for t in targets:
        parts = t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t]
        if not all(isinstance(p, ast.Name) for p in parts):
            return None
        names += [p.id for p in parts if isinstance(p, ast.Name)]
    return names


def _junk(stmt: ast.stmt, read: Counter[str]) -> bool:
    """A statement that computes nothing the program uses."""
    names = _stores(stmt)
    if names is not None:
        return not any(read[n] for n in names)
    if isinstance(stmt, ast.Pass):
        return True
    if isinstance(stmt, ast.Expr):
        v = stmt.value
        return isinstance(v, (ast.Constant, ast.Name)) or (
            isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "print")
    if isinstance(stmt, (ast.If, ast.While)) and isinstance(stmt.test, ast.Constant):
        return not stmt.test.value and not stmt.orelse
    return False


def _accumulates(stmt: ast.stmt) -> tuple[str, str, ast.expr | tuple[ast.expr, ast.expr]] | None:
    """(kind, accumulator, element) of ``acc.append(e)``, ``acc.add(e)``, ``acc[k] = v``, ``acc += e``."""
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        call = stmt.value
        f = call.func
        if (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.attr in ("append", "add")
                and len(call.args) == 1 and not call.keywords):
            return ("list" if f.attr == "append" else "set"), f.value.id, call.args[0]
    if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Subscript)
            and isinstance(stmt.targets[0].value, ast.Name) and not isinstance(stmt.targets[0].slice, ast.Slice)):
        t = stmt.targets[0]
        return "dict", t.value.id, (t.slice, stmt.value)  # type: ignore[attr-defined]
    if isinstance(stmt, ast.AugAssign) and isinstance(stmt.op, ast.Add) and isinstance(stmt.target, ast.Name):
        return "sum", stmt.target.id, stmt.value
    return None


def _nest(loop: ast.For) -> tuple[list[ast.comprehension], ast.stmt]:
    """The generators a nest of single-statement ``for`` / ``if`` spells, and the statement inside it."""
    gens: list[ast.comprehension] = []
    node: ast.stmt = loop
    while True:
        if isinstance(node, ast.For) and not node.orelse and len(node.body) == 1:
            gens.append(ast.comprehension(node.target, node.iter, [], 0))
            node = node.body[0]
        elif isinstance(node, ast.If) and not node.orelse and len(node.body) == 1 and gens:
            gens[-1].ifs.append(node.test)
            node = node.body[0]
        else:
            return gens, node


def _bool(node: ast.AST) -> bool | None:
    """The value of ``return True`` / ``return False`` (None for any other statement)."""
    if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, bool):
        return node.value.value
    return None


def _search(loop: ast.stmt, after: ast.stmt) -> ast.Return | None:
    """``for ...: [if c:] return True`` then ``return False`` -> ``return any(True for ... if c)``
    (``not any`` for the reverse): a search loop and its any()/all() meet."""
    if not isinstance(loop, ast.For):
        return None
    gens, inner = _nest(loop)
    found, otherwise = _bool(inner), _bool(after)
    if not gens or found is None or otherwise is None or found == otherwise:
        return None
    call: ast.expr = ast.Call(ast.Name("any", ast.Load()), [ast.GeneratorExp(ast.Constant(True), gens)], [])
    return ast.Return(call if found else ast.UnaryOp(ast.Not(), call))


INVERSE = {ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
           ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}


def _negate(e: ast.expr) -> ast.expr:
    """``not e``, with ``not a < b`` written ``a >= b`` and ``not not e`` as ``e``."""
    if isinstance(e, ast.Compare) and len(e.ops) == 1:
        return ast.Compare(e.left, [INVERSE[type(e.ops[0])]()], e.comparators)
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.Not):
        return e.operand
    return ast.UnaryOp(ast.Not(), e)


class _AnyAll(ast.NodeTransformer):
    """``any(e for ...)`` -> ``any(True for ... if e)``, ``all(e for ...)`` -> ``not any(True for ... if not e)``,
    ``not a < b`` -> ``a >= b``: the forms a search loop canonicalises to."""

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        self.generic_visit(node)
        return _negate(node.operand) if isinstance(node.op, ast.Not) and isinstance(node.operand, ast.Compare) else node

    def visit_Call(self, node: ast.Call) -> ast.expr:
        self.generic_visit(node)
        f, args = node.func, node.args
        if not (isinstance(f, ast.Name) and f.id in ("any", "all") and len(args) == 1 and not node.keywords
                and isinstance(args[0], ast.GeneratorExp)) or not args[0].generators:
            return node
        gen = args[0]
        elt = gen.elt if f.id == "any" else _negate(gen.elt)
        if not (isinstance(elt, ast.Constant) and elt.value is True):
            gen.generators[-1].ifs.append(elt)
        call = ast.Call(ast.Name("any", ast.Load()), [ast.GeneratorExp(ast.Constant(True), gen.generators)], [])
        return call if f.id == "any" else ast.UnaryOp(ast.Not(), call)


def _comprehension(loop: ast.For) -> tuple[str, str, ast.expr] | None:
    """(kind, accumulator, comprehension) that the loop nest spells, or None."""
    gens, node = _nest(loop)
    if not gens:
        return None
    acc = _accumulates(node)
    if acc is None and isinstance(node, ast.If) and len(node.body) == len(node.orelse) == 1:
        yes, no = _accumulates(node.body[0]), _accumulates(node.orelse[0])
        if yes and no and yes[:2] == no[:2] and yes[0] in ("list", "sum"):
            acc = yes[0], yes[1], ast.IfExp(node.test, yes[2], no[2])  # type: ignore[arg-type]
    if acc is None:
        return None
    kind, name, elt = acc
    inside = [n.id for g in gens for part in (g.iter, *g.ifs) for n in ast.walk(part) if isinstance(n, ast.Name)]
    element = elt if isinstance(elt, ast.expr) else ast.Tuple(list(elt), ast.Load())
    if name in inside or any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(element)):
        return None  # the loop reads what it builds: not a comprehension
    if kind == "list":
        return kind, name, ast.ListComp(elt, gens)
    if kind == "set":
        return kind, name, ast.SetComp(elt, gens)
    if kind == "dict":
        key, value = elt  # type: ignore[misc]
        return kind, name, ast.DictComp(key, value, gens)
    return kind, name, ast.Call(ast.Name("sum", ast.Load()), [ast.GeneratorExp(elt, gens)], [])


def _empty(value: ast.expr, kind: str) -> bool:
    """Whether ``value`` is the accumulator's start: empty (``[]``, ``list()``), or any number for a sum
    (literals are abstracted anyway: ``total = 1`` + a loop and ``total = sum(...)`` meet)."""
    if kind == "sum":
        return isinstance(value, ast.Constant) and type(value.value) in (int, float)
    return ast.unparse(value).replace(" ", "") in (EMPTY[kind], f"{kind}()")


class _Canon:
    """One tree, rewritten in place; :meth:`run` says whether anything changed."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree, self.changed = tree, False

    def run(self) -> bool:
        for _ in range(3):  # junk that only fed junk goes on the next round
            read = _loads(self.tree)
            before = self.changed
            for body in self._bodies():
                kept = [s for s in body if not _junk(s, read)] or body[:1]
                if len(kept) != len(body):
                    body[:] = kept
                    self.changed = True
            if self.changed == before:
                break
        bodies = self._bodies()
        for body in bodies:
            self._roll_loops(body)
        read = _loads(self.tree)  # once: every tree walk per body would make a long file quadratic
        for body in bodies:
            self._inline_return(body, read)
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call) and len(node.args) == 1 and isinstance(node.args[0], ast.ListComp):
                comp = node.args[0]
                node.args[0] = ast.GeneratorExp(comp.elt, comp.generators)
                self.changed = True
            elif isinstance(node, ast.Name) and node.id in ("any", "all") or isinstance(node, ast.Not):
                self.changed = True
        if self.changed:
            _AnyAll().visit(self.tree)
        return self.changed

    def _bodies(self) -> list[list[ast.stmt]]:
        return [body for node in ast.walk(self.tree) for f in ("body", "orelse", "finalbody")
                if isinstance(body := getattr(node, f, None), list) and body and isinstance(body[0], ast.stmt)]

    def _roll_loops(self, body: list[ast.stmt]) -> None:
        k = 0
        while k < len(body):
            loop = body[k]
            search = _search(loop, body[k + 1]) if k + 1 < len(body) else None
            if search is not None:
                body[k:k + 2] = [search]
                self.changed = True
                continue
            found = _comprehension(loop) if isinstance(loop, ast.For) else None
            init = self._init(body, k, found[1]) if found else None
            start = body[init] if found and init is not None else None
            if found and isinstance(start, (ast.Assign, ast.AnnAssign)) and start.value is not None \
                    and _empty(start.value, found[0]):
                body[init] = ast.Assign([ast.Name(found[1], ast.Store())], found[2], lineno=0)
                del body[k]
                self.changed = True
                continue
            k += 1

    @staticmethod
    def _init(body: list[ast.stmt], k: int, name: str) -> int | None:
        """Index of the statement before ``k`` that starts the accumulator (nothing between touches it)."""
        for j in range(k - 1, max(-1, k - 1 - LOOKBACK), -1):
            mentions = any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(body[j]))
            if mentions:
                return j if _stores(body[j]) == [name] and not isinstance(body[j], ast.AugAssign) else None
        return None

    def _inline_return(self, body: list[ast.stmt], read: Counter[str]) -> None:
        for k in range(len(body) - 1):
            a, b = body[k], body[k + 1]
            if (isinstance(a, ast.Assign) and _stores(a) and len(a.targets) == 1 and isinstance(a.targets[0], ast.Name)
                    and isinstance(b, ast.Return) and isinstance(b.value, ast.Name)
                    and b.value.id == a.targets[0].id and read[b.value.id] == 1):
                body[k:k + 2] = [ast.Return(a.value)]
                self.changed = True
                return
