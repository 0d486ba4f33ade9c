"""Tests of a ``pmat sandbox`` file, read as data: nothing the file supplies runs on the trusted side.

A file's tests are as untrusted as its program, so they are never executed as written.
pmat parses them and accepts only a literal shape, which it re-emits itself (from the
syntax tree it validated) as the trusted runner's code:

- statements: ``assert EXPR[, msg]``, ``NAME = EXPR``, ``for TARGET in LITERAL:`` (unrolled;
  also ``range``/``enumerate``/``zip`` of literals, or a name bound to a literal at top
  level), ``pass``, ``print(...)`` and imports (dropped);
- expressions: literals, names bound by those statements, calls of the program's functions
  (by name), comparisons, ``and``/``or``/``not``, ``+ - / //``, subscripts, and calls of
  ``abs all any bool float frozenset int isinstance len list max min round set sorted str
  sum tuple`` and ``math.isclose/fabs/floor/ceil/sqrt``.

Where tests are found: top-level asserts and loops of asserts, the body of ``if __name__ ==
"__main__":``, functions that assert and are named ``check`` (with ``check(f)`` calls, or
``--entry-point``) or ``test*``, or are called at top level or under that guard. Anything else in a test is refused with its line, and the program part (the
rest of the file) runs confined as usual.
"""

from __future__ import annotations

import ast
import builtins
import copy
import itertools
from typing import Any

WRAPPERS = frozenset("abs all any bool float frozenset int isinstance len list max min round set sorted str sum "
                     "tuple".split())
TYPES = frozenset("int float str bool list tuple dict set frozenset complex bytes".split())
MATH = frozenset({"isclose", "fabs", "floor", "ceil", "sqrt"})
_OPS = (ast.Add, ast.Sub, ast.Div, ast.FloorDiv, ast.USub, ast.UAdd, ast.Not, ast.And, ast.Or, ast.Eq,
        ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot, ast.In, ast.NotIn)
MAX_STATEMENTS = 20_000
MAX_STEPS = 200_000  # statements visited while unrolling (nested loops of `pass` included)


class Unsupported(ValueError):
    """A test the literal reader does not accept (the message names its line)."""


def _fail(node: ast.AST, why: str) -> Unsupported:
    return Unsupported(f"line {getattr(node, 'lineno', '?')}: {why}")


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise _fail(node, f"not a literal: {ast.unparse(node)[:80]}") from None


def _const(value: Any) -> ast.expr:
    """A syntax node for a literal value (bound loop variables become constants)."""
    if isinstance(value, (list, tuple, set)):
        elts = [_const(v) for v in value]
        if isinstance(value, set):
            return ast.Set(elts=elts) if elts else ast.Call(ast.Name("set", ast.Load()), [], [])
        return (ast.List if isinstance(value, list) else ast.Tuple)(elts=elts, ctx=ast.Load())
    if isinstance(value, dict):
        return ast.Dict(keys=[_const(k) for k in value], values=[_const(v) for v in value.values()])
    return ast.Constant(value)


class _Reader:
    def __init__(self, functions: set[str], literals: dict[str, Any]) -> None:
        self.functions = functions  # names the program defines (callable in tests)
        self.literals = literals  # top-level names bound to literals
        self.bound: set[str] = set()  # names the emitted tests assign
        self.out: list[ast.stmt] = []
        self.steps = 0

    def expr(self, node: ast.expr, env: dict[str, Any]) -> ast.expr:
        """A validated copy of ``node`` with loop variables replaced by constants."""
        if isinstance(node, ast.Constant):
            return node
        if isinstance(node, ast.Name):
            if node.id in env:
                bound = env[node.id]
                return ast.Name(bound.name, ast.Load()) if isinstance(bound, _Function) else _const(bound)
            if node.id in self.bound or node.id in TYPES:
                return node
            if node.id in self.literals:
                return _const(self.literals[node.id])
            raise _fail(node, f"name {node.id!r} is neither a literal nor bound by the tests")
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return type(node)(elts=[self.expr(e, env) for e in node.elts], **(
                {} if isinstance(node, ast.Set) else {"ctx": ast.Load()}))
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise _fail(node, "dict unpacking")
            return ast.Dict(keys=[self.expr(k, env) for k in node.keys], values=[self.expr(v, env) for v in node.values])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, _OPS):
            return ast.UnaryOp(node.op, self.expr(node.operand, env))
        if isinstance(node, ast.BinOp) and isinstance(node.op, _OPS):
            return ast.BinOp(self.expr(node.left, env), node.op, self.expr(node.right, env))
        if isinstance(node, ast.BoolOp) and isinstance(node.op, _OPS):
            return ast.BoolOp(node.op, [self.expr(v, env) for v in node.values])
        if isinstance(node, ast.Compare) and all(isinstance(op, _OPS) for op in node.ops):
            return ast.Compare(self.expr(node.left, env), node.ops, [self.expr(c, env) for c in node.comparators])
        if isinstance(node, ast.Subscript):
            return ast.Subscript(self.expr(node.value, env), self.expr(node.slice, env), ast.Load())
        if isinstance(node, ast.Slice):
            return ast.Slice(*(self.expr(p, env) if p is not None else None for p in (node.lower, node.upper, node.step)))
        if isinstance(node, ast.Call):
            return self.call(node, env)
        raise _fail(node, f"{type(node).__name__} is not accepted in a test: {ast.unparse(node)[:80]}")

    def call(self, node: ast.Call, env: dict[str, Any]) -> ast.expr:
        func = node.func
        if isinstance(func, ast.Name) and func.id in env and isinstance(env[func.id], _Function):
            func = ast.Name(env[func.id].name, ast.Load())  # check(candidate): the program's function
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "math" and (
                func.attr in MATH):
            target: ast.expr = ast.Attribute(ast.Name("math", ast.Load()), func.attr, ast.Load())
        elif isinstance(func, ast.Name) and (func.id in WRAPPERS or func.id in self.functions):
            target = ast.Name(func.id, ast.Load())
        else:
            raise _fail(node, f"call of {ast.unparse(func)[:60]!r}: only the program's functions and "
                              f"{', '.join(sorted(WRAPPERS))} may be called in a test")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise _fail(node, "* or ** arguments")
        return ast.Call(target, [self.expr(a, env) for a in node.args],
                        [ast.keyword(k.arg, self.expr(k.value, env)) for k in node.keywords])

    def emit(self, stmt: ast.stmt) -> None:
        self.out.append(stmt)
        if len(self.out) > MAX_STATEMENTS:
            raise _fail(stmt, f"more than {MAX_STATEMENTS} test statements after unrolling loops")

    def body(self, stmts: list[ast.stmt], env: dict[str, Any]) -> None:
        for stmt in stmts:
            self.statement(stmt, env)

    def statement(self, stmt: ast.stmt, env: dict[str, Any]) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise _fail(stmt, f"more than {MAX_STEPS} test statements visited while unrolling loops")
        if isinstance(stmt, ast.Assert):
            self.emit(ast.Assert(self.expr(stmt.test, env), None))
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name = stmt.targets[0].id
            if name in WRAPPERS or name in TYPES or name == "math" or name.startswith("__"):
                raise _fail(stmt, f"a test may not rebind {name!r}")
            value = self.expr(stmt.value, env)
            env.pop(name, None)
            try:  # a literal: substituted where used (loops may run over it)
                self.literals[name] = ast.literal_eval(value)
                self.bound.discard(name)
                return
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                self.literals.pop(name, None)
            self.bound.add(name)
            self.emit(ast.Assign([ast.Name(name, ast.Store())], value))
        elif isinstance(stmt, ast.For) and not stmt.orelse:
            for item in self.iterate(stmt.iter, env):
                inner = dict(env)
                self.bind(stmt.target, item, inner)
                self.body(stmt.body, inner)
        elif isinstance(stmt, (ast.Pass, ast.Import, ast.ImportFrom)) or (
                isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
                and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "print"):
            return
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            return  # a docstring
        else:
            raise _fail(stmt, f"{type(stmt).__name__} is not accepted in a test: {ast.unparse(stmt)[:80]}")

    def iterate(self, node: ast.expr, env: dict[str, Any]) -> list[Any]:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                "range", "enumerate", "zip") and not node.keywords:
            args = [self.value(a, env) for a in node.args]
            try:
                items = list(itertools.islice({"range": range, "enumerate": enumerate, "zip": zip}[node.func.id](
                    *args), MAX_STATEMENTS + 1))
            except (TypeError, ValueError, OverflowError) as exc:
                raise _fail(node, str(exc)) from None
        else:
            items = self.value(node, env)
        if not isinstance(items, (list, tuple, set, frozenset, dict, str, range)):
            raise _fail(node, "a test loop must run over a literal")
        return list(items)[:MAX_STATEMENTS + 1]

    def value(self, node: ast.expr, env: dict[str, Any]) -> Any:
        if isinstance(node, ast.Name) and node.id in env:
            return env[node.id]
        if isinstance(node, ast.Name) and node.id in self.literals:
            return self.literals[node.id]
        return _literal(node)

    def bind(self, target: ast.expr, value: Any, env: dict[str, Any]) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            try:
                values = list(value)
            except TypeError:
                raise _fail(target, "cannot unpack a loop item") from None
            if len(values) != len(target.elts):
                raise _fail(target, "loop item of the wrong length")
            for t, v in zip(target.elts, values, strict=True):
                self.bind(t, v, env)
        else:
            raise _fail(target, "loop target must be names")


class _Function:
    """A program function handed to ``check(candidate)``."""

    def __init__(self, name: str) -> None:
        self.name = name


def _is_main_guard(node: ast.stmt) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__" and len(node.test.comparators) == 1
            and isinstance(node.test.comparators[0], ast.Constant) and node.test.comparators[0].value == "__main__")


def _has_assert(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def _test_functions(body: list[ast.stmt]) -> set[str]:
    """Functions whose body is tests: ``check``, ``test*``, and any other that asserts and is
    called at top level or under the ``__main__`` guard (``def run(): assert ...; run()``)."""
    calls = set()
    for node in body:
        for stmt in node.body if _is_main_guard(node) else [node]:
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and isinstance(stmt.value.func, ast.Name):
                calls.add(stmt.value.func.id)
    return {n.name for n in body if isinstance(n, ast.FunctionDef) and _has_assert(n) and (
        n.name == "check" or n.name.startswith("test") or n.name in calls)}


def split(source: str, tests: str | None = None, entry_point: str | None = None) -> tuple[str, str, dict[str, str]]:
    """(program, trusted test code, aliases): the program part of ``source``, pmat's own
    rendering of the tests in ``source`` (or in ``tests``, a separate file), and the program
    functions that shadow builtins (the job binds them to the program's, as in-process).
    Raises ``Unsupported``; a program that does not parse comes back whole (the sandbox
    reports its syntax error)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # null bytes, absurd nesting
        return source, "", {}
    try:
        test_tree = ast.parse(tests) if tests is not None else None
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise Unsupported(f"tests file does not parse: {type(exc).__name__}: {str(exc)[:200]}") from None
    try:
        return _split(source, tree, test_tree, entry_point)
    except RecursionError:
        raise Unsupported("tests nested too deeply") from None


def _split(source: str, tree: ast.Module, test_tree: ast.Module | None,
           entry_point: str | None) -> tuple[str, str, dict[str, str]]:
    lines = source.splitlines(keepends=True)
    program: list[str] = []
    functions = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    literals: dict[str, Any] = {}
    checks: dict[str, ast.FunctionDef] = {}
    test_nodes: list[ast.stmt] = []
    test_fns = _test_functions(tree.body if test_tree is None else test_tree.body)
    for node in ([] if test_tree is not None else tree.body):
        is_test = isinstance(node, ast.Assert) or _is_main_guard(node) or (
            isinstance(node, ast.FunctionDef) and node.name in test_fns) or (
            isinstance(node, (ast.For, ast.While)) and _has_assert(node)) or (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
            and node.value.func.id in test_fns)
        if is_test:
            test_nodes.append(node)
            continue
        start = node.lineno - 1 - len(getattr(node, "decorator_list", []))
        program.append("".join(lines[start:node.end_lineno]))
    if test_tree is not None:  # a separate tests file: the whole source is the program
        test_nodes, program = list(test_tree.body), [source]
    for node in tree.body + test_nodes:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                literals[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                pass
    functions -= {"check"} | {n.name for n in test_nodes if isinstance(n, ast.FunctionDef)}
    functions = {f for f in functions if not f.startswith("__")}
    if entry_point and (not entry_point.isidentifier() or entry_point.startswith("__")):
        raise Unsupported(f"entry point {entry_point!r} is not a function name")
    reader = _Reader(functions, literals)
    called: set[str] = set()
    flat: list[ast.stmt] = []
    for node in test_nodes:
        flat += node.body if _is_main_guard(node) else [node]
    for node in flat:
        if isinstance(node, ast.FunctionDef) and node.name in test_fns:
            checks[node.name] = node
    for node in flat:
        if isinstance(node, ast.FunctionDef) and node.name in checks:
            continue
        if isinstance(node, ast.Assign) and test_tree is not None and isinstance(node.targets[0], ast.Name) and (
                node.targets[0].id in literals):
            continue  # a literal of the tests file (METADATA = {...})
        call = node.value if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) else None
        if call is not None and isinstance(call.func, ast.Name) and call.func.id in checks:
            _expand(reader, checks[call.func.id], call)
            called.add(call.func.id)
            continue
        reader.statement(node, {})
    for name, fn in checks.items():
        if name in called:
            continue
        if name == "check":
            if not entry_point:
                raise _fail(fn, "check() is defined but never called (name the function with --entry-point)")
            _expand(reader, fn, ast.Call(ast.Name("check", ast.Load()), [ast.Name(entry_point, ast.Load())], []))
            reader.functions.add(entry_point)
        elif fn.args.args:
            raise _fail(fn, f"test function {name}() takes arguments and is never called")
        else:
            reader.body(fn.body, {})
    if not reader.out:
        raise Unsupported("no tests found (top-level asserts, check(), test_* or an if __name__ == '__main__' block)")
    module = ast.Module(body=[copy.deepcopy(s) for s in reader.out], type_ignores=[])
    aliases = {f: f for f in reader.functions if f in builtins.__dict__}
    return "".join(program), ast.unparse(ast.fix_missing_locations(module)) + "\n", aliases


def _expand(reader: _Reader, fn: ast.FunctionDef, call: ast.Call) -> None:
    """The body of ``check(candidate)`` with each parameter bound to the call's argument."""
    params = [a.arg for a in fn.args.args]
    if len(call.args) != len(params) or call.keywords:
        raise _fail(call, f"{fn.name}() called with other arguments than it takes")
    env: dict[str, Any] = {}
    for param, arg in zip(params, call.args, strict=True):
        if isinstance(arg, ast.Name) and arg.id in reader.functions:
            env[param] = _Function(arg.id)
        else:
            env[param] = reader.value(arg, {})
    reader.body(fn.body, env)
