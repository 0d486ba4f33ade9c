"""Decontamination recall and false refusals: every HumanEval problem in many disguises.

Each of the 164 HumanEval problems is turned into a training row in each disguise below,
and the row counts as caught when the check refuses it *for that problem* (a hit on
another task does not count). Clean rows are MBPP's train, validation and prompt splits
(statement, asserts and reference code in one row), and 4,000 functions of Python's standard
library; a clean row refused for a HumanEval problem is a false refusal. MBPP's test split
against those MBPP rows is reported too: MBPP has near-duplicate tasks across its splits, so
those hits are measured, not targeted.

    .venv/bin/python bench/decontam.py [--mbpp engine/pipelines/data/mbpp] [--show 12]
        [--humaneval-plus FILE] [--mbpp-plus FILE] [--plusgen] [--only DISGUISE,...]

``--plusgen`` builds evalplus-format HumanEval+ / MBPP+ files on the spot (engine/data/plusgen.py)
when the release files are not at hand, so that every evaluation set the gates read is indexed.

Prints ``BENCH <name> <value> <target> PASS|MISS`` lines, then the problems each
disguise misses.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from engine.data import humaneval, mbpp
from engine.data.decontam import Contamination, DecontamIndex, eval_index, statement_of

ROOT = Path(__file__).resolve().parents[1]
RECALL, FALSE_REFUSALS, BUILD_S = 0.95, 0.01, 5.0
ROWS_PER_S = 100  # tens of thousands of training rows in a few minutes, on one shared core
SYNONYMS = {
    "return": "give back", "returns": "gives back", "list": "sequence", "string": "text", "strings": "texts",
    "number": "value", "numbers": "values", "given": "provided", "function": "routine", "check": "test",
    "integer": "whole number", "integers": "whole numbers", "find": "determine", "count": "tally",
    "write": "implement", "each": "every", "element": "item", "elements": "items", "largest": "biggest",
    "smallest": "tiniest", "first": "initial", "last": "final", "contains": "includes", "sum": "total",
    "characters": "letters", "character": "letter", "sorted": "ordered", "positive": "above-zero",
    "array": "collection", "input": "argument", "output": "result", "you": "one", "are": "happen to be",
}


# --- source transformations ------------------------------------------------------------------
def docstring_lines(code: str) -> set[int]:
    """1-based line numbers of every docstring in ``code``."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                lines |= set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def strip_docstrings(code: str) -> str:
    drop = docstring_lines(code)
    return "".join(line for i, line in enumerate(code.splitlines(keepends=True), 1) if i not in drop)


def defined_names(code: str) -> list[str]:
    """Names the code binds itself (functions, parameters, variables), not builtins or imports."""
    names: list[str] = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.arg):
            names.append(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.append(node.id)
    return [n for n in dict.fromkeys(names) if not hasattr(builtins, n)]


def rename(code: str) -> str:
    """Every name the code defines replaced, in code, strings and docstrings alike (a search-and-replace)."""
    for k, name in enumerate(sorted(defined_names(code), key=len, reverse=True)):
        code = re.sub(rf"(?<![.\w]){re.escape(name)}\b", f"{'abcdefgh'[k % 8]}{k}_{len(name)}", code)
    return code


def reformat(code: str) -> str:
    """Canonical layout (ast.unparse: quotes, spacing, parentheses, no comments), two-space indents."""
    text = ast.unparse(ast.parse(code))
    return re.sub(r"(?m)^((?:    )+)", lambda m: "  " * (len(m.group(1)) // 4), text) + "\n"


class _Literals(ast.NodeTransformer):
    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        v = node.value
        if isinstance(v, bool) or v is None or v is Ellipsis:
            return node
        if isinstance(v, (int, float)):
            return ast.copy_location(ast.Constant(v + 7 if v else 3), node)
        if isinstance(v, str):
            return ast.copy_location(ast.Constant(("<" + v + ">") if v else "#"), node)
        return node


def change_literals(code: str) -> str:
    return ast.unparse(_Literals().visit(ast.parse(code))) + "\n"


def _reads_writes(stmt: ast.stmt) -> tuple[set[str], set[str]]:
    names = [n for n in ast.walk(stmt) if isinstance(n, ast.Name)]
    return {n.id for n in names if isinstance(n.ctx, ast.Load)}, {n.id for n in names if not isinstance(n.ctx, ast.Load)}


def _independent(a: ast.stmt, b: ast.stmt) -> bool:
    simple = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Import, ast.ImportFrom)
    if not (isinstance(a, simple) and isinstance(b, simple)):
        return False
    (ra, wa), (rb, wb) = _reads_writes(a), _reads_writes(b)
    return not (wa & (rb | wb) or wb & ra)


def reorder(code: str) -> str:
    """Adjacent independent simple statements swapped ('' when the code has none to swap)."""
    tree, swapped = ast.parse(code), False
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if not isinstance(body, list):
                continue
            k = 0
            while k + 1 < len(body):
                if _independent(body[k], body[k + 1]):
                    body[k], body[k + 1] = body[k + 1], body[k]
                    swapped, k = True, k + 2
                else:
                    k += 1
    return ast.unparse(tree) + "\n" if swapped else ""


def add_comments(code: str) -> str:
    out = []
    for k, line in enumerate(code.splitlines()):
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "@", "else", "elif", "except", "finally")):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# step {k}: we handle the next part of the task here")
        out.append(line + ("  # see above" if stripped.endswith(")") else ""))
    return "\n".join(out) + "\n"


class _Hints(ast.NodeTransformer):
    def __init__(self, add: bool) -> None:
        self.add = add

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.annotation = (node.annotation or ast.Name("object")) if self.add else None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        self.generic_visit(node)
        node.returns = (node.returns or ast.Name("object")) if self.add else None
        return node


def hints(code: str, add: bool) -> str:
    return ast.unparse(ast.fix_missing_locations(_Hints(add).visit(ast.parse(code)))) + "\n"


def wrap_in_class(code: str) -> str:
    """Top-level functions become methods of ``class Solution`` (self first, calls through self)."""
    tree = ast.parse(code)
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in funcs:
            node.func = ast.Attribute(ast.Name("self"), node.func.id)
    methods, rest = [], []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            node.args.args.insert(0, ast.arg("self"))
            methods.append(node)
        else:
            rest.append(node)
    tree.body = rest + [ast.ClassDef("Solution", [], [], methods, [])]
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def after_each_statement(code: str, junk) -> str:
    """``junk(k, out)`` statements after every simple statement: the k-th insertion, ``out`` the body so far."""
    tree, count = ast.parse(code), 0
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                out: list[ast.stmt] = []
                for stmt in body:
                    out.append(stmt)
                    if not isinstance(stmt, (ast.Return, ast.Raise, ast.Continue, ast.Break, ast.FunctionDef)):
                        out += junk(count, out)
                        count += 1
                setattr(node, field, out)
    return ast.unparse(tree) + "\n"


def insert_dead_code(code: str) -> str:
    """A useless assignment after every simple statement (breaks every n-gram across statements)."""
    return after_each_statement(code, lambda k, out: ast.parse(f"_unused_{len(out)} = {len(out)}").body)


class _Unroll(ast.NodeTransformer):
    """``return [e for x in xs if c]`` -> an explicit loop appending to a list."""

    def visit_Return(self, node: ast.Return) -> ast.AST | list[ast.stmt]:
        comp = node.value
        if not (isinstance(comp, ast.ListComp) and len(comp.generators) == 1):
            return node
        gen = comp.generators[0]
        body: ast.stmt = ast.Expr(ast.Call(ast.Attribute(ast.Name("acc"), "append"), [comp.elt], []))
        for cond in reversed(gen.ifs):
            body = ast.If(cond, [body], [])
        return [ast.parse("acc = []").body[0], ast.For(gen.target, gen.iter, [body], []), ast.Return(ast.Name("acc"))]


def unroll_comprehensions(code: str) -> str:
    tree = ast.parse(code)
    text = ast.unparse(ast.fix_missing_locations(_Unroll().visit(tree))) + "\n"
    return text if "acc = []" in text else ""


def roll_loops(code: str) -> str:
    """``out = []`` then ``for x in xs: [if c:] out.append(e)`` -> ``out = [e for x in xs if c]`` ('' if none)."""
    tree, rolled = ast.parse(code), False
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for k in range(len(body) - 1, 0, -1):
            init, loop = body[k - 1], body[k]
            if not (isinstance(init, ast.Assign) and isinstance(init.value, ast.List) and not init.value.elts
                    and isinstance(loop, ast.For) and not loop.orelse and len(loop.body) == 1):
                continue
            inner, ifs = loop.body[0], []
            if isinstance(inner, ast.If) and not inner.orelse and len(inner.body) == 1:
                ifs, inner = [inner.test], inner.body[0]
            call = inner.value if isinstance(inner, ast.Expr) else None
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "append"
                    and ast.unparse(call.func.value) == ast.unparse(init.targets[0]) and len(call.args) == 1):
                init.value = ast.ListComp(call.args[0], [ast.comprehension(loop.target, loop.iter, ifs, 0)])
                del body[k]
                rolled = True
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n" if rolled else ""


def search_to_any_all(code: str) -> str:
    """``for x in xs: if c: return True`` + ``return False`` -> ``return any(c for x in xs)``; the False/True
    form -> ``return all(not (c) for x in xs)`` ('' when the code has no such loop)."""
    tree, done = ast.parse(code), False
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for k in range(len(body) - 2, -1, -1):
            loop, after = body[k], body[k + 1]
            if not (isinstance(loop, ast.For) and not loop.orelse and len(loop.body) == 1
                    and isinstance(loop.body[0], ast.If) and not loop.body[0].orelse
                    and len(loop.body[0].body) == 1 and isinstance(after, ast.Return)):
                continue
            inner, test = loop.body[0].body[0], loop.body[0].test
            values = [ast.unparse(x.value) if isinstance(x, ast.Return) and x.value else "" for x in (inner, after)]
            if values not in (["True", "False"], ["False", "True"]):
                continue
            elt = test if values[0] == "True" else ast.UnaryOp(ast.Not(), test)
            gen = ast.GeneratorExp(elt, [ast.comprehension(loop.target, loop.iter, [], 0)])
            body[k:k + 2] = [ast.Return(ast.Call(ast.Name("any" if values[0] == "True" else "all"), [gen], []))]
            done = True
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n" if done else ""


JUNK = ["tmp_{k} = len(str({k}))", "pass", "print('step', {k})", "if False:\n    unused_{k} = {k}",
        "_ = None", "flag_{k} = True"]


def insert_mixed_junk(code: str) -> str:
    """One of several kinds of junk statement after every simple statement (prints, pass, dead stores, dead ifs)."""
    return after_each_statement(code, lambda k, out: ast.parse(JUNK[k % len(JUNK)].format(k=k)).body)


def rename_function(text: str, name: str, new: str) -> str:
    """The function renamed in prose: where it is called, and everywhere when the name is code-like
    (``prime_fib``); a plain word that names the concept (median, unique) stays a word."""
    code_like = "_" in name.strip("_") or name != name.lower()
    return re.sub(rf"\b{re.escape(name)}\b" + ("" if code_like else r"(?=\s*\()"), new, text)


def paraphrase(p: humaneval.Problem) -> str:
    """The statement without examples, words swapped for synonyms, the function renamed."""
    text = rename_function(statement_of(p.prompt), p.entry_point, "solve_it")
    text = re.sub(r"[A-Za-z]+", lambda m: SYNONYMS.get(m.group().lower(), m.group()), text)
    return "Please implement the following. " + " ".join(text.split())


# a second thesaurus, written apart from the checker's synonym groups, for a harsher paraphrase
SYNONYMS_2 = {
    "return": "hand back", "returns": "hands back", "list": "series", "lists": "series", "string": "character run",
    "strings": "character runs", "given": "incoming", "number": "figure", "numbers": "figures", "if": "whether",
    "check": "decide", "function": "procedure", "only": "solely", "empty": "blank", "first": "opening",
    "words": "tokens", "word": "token", "sorted": "arranged", "integer": "int value", "integers": "int values",
    "length": "extent", "find": "work out", "in": "within", "all": "every one of the", "two": "a pair of",
    "and": "as well as", "the": "that", "should": "ought to", "contains": "has inside", "vowels": "vowel letters",
}


def sentences_of(text: str) -> list[str]:
    return [x for x in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if x]


def paraphrase_harder(p: humaneval.Problem) -> str:
    """Another thesaurus, sentences rotated (the first one last), the function renamed, no examples."""
    text = rename_function(statement_of(p.prompt), p.entry_point, "the_routine")
    sentences = sentences_of(re.sub(r"[A-Za-z]+", lambda m: SYNONYMS_2.get(m.group().lower(), m.group()), text))
    return "Task: " + " ".join(sentences[1:] + sentences[:1])


# a third thesaurus (everyday rewording, not the checker's groups) and sentence templates of their own
SYNONYMS_3 = {
    "return": "send back", "returns": "sends back", "list": "bunch", "lists": "bunches", "given": "supplied",
    "string": "piece of text", "strings": "pieces of text", "number": "quantity", "numbers": "quantities",
    "function": "method", "write": "code up", "if": "in case", "each": "any single", "true": "yes (True)",
    "false": "no (False)", "count": "how many", "element": "entry", "elements": "entries", "in": "inside",
    "integer": "whole quantity", "integers": "whole quantities", "consider": "think about", "you": "we",
    "have": "hold", "has": "holds", "input": "incoming data", "positive": "greater-than-zero", "of": "from",
}
TEMPLATES = ("We need the following: {}", "In other words, {}", "Note that {}", "Also, {}", "Keep in mind: {}")
DOCTEST = re.compile(r">>>\s*\w+\((.*)\)\s*\n\s*(?!>>>)(\S[^\n]*)")


def paraphrase_templated(p: humaneval.Problem) -> str:
    """Sentences reversed, each in a sentence template, a third thesaurus, the function renamed, and the
    doctests kept as plain 'given ... the answer is ...' lines (no call, no prompt)."""
    text = rename_function(statement_of(p.prompt), p.entry_point, "helper")
    words = re.sub(r"[A-Za-z]+", lambda m: SYNONYMS_3.get(m.group().lower(), m.group()), text)
    lines = [TEMPLATES[k % len(TEMPLATES)].format(s) for k, s in enumerate(reversed(sentences_of(words)))]
    docstring = ast.get_docstring(next(n for n in ast.walk(ast.parse(p.prompt + "    pass\n"))
                                       if isinstance(n, ast.FunctionDef) and n.name == p.entry_point)) or ""
    lines += [f"Sample {k + 1}: given {args.strip()} the answer is {out.strip()}."
              for k, (args, out) in enumerate(DOCTEST.findall(docstring))]
    return "\n".join(lines)


def chat(p: humaneval.Problem, code: str) -> dict:
    return {"messages": [{"role": "user", "content": "Can you help me with this exercise?"},
                         {"role": "assistant", "content": f"Sure, here you go:\n\n```python\n{code}```\n"
                                                          "It runs in linear time."}]}


def bare(p: humaneval.Problem) -> str:
    return strip_docstrings(p.prompt + p.canonical_solution)


DISGUISES: dict[str, Callable[[humaneval.Problem], object]] = {
    "verbatim": lambda p: p.prompt + p.canonical_solution,
    "renamed_with_docstring": lambda p: rename(p.prompt + p.canonical_solution),
    "paraphrased_statement": paraphrase,
    "paraphrased_statement_other_thesaurus_sentences_rotated": paraphrase_harder,
    "paraphrased_statement_templated_examples_reformatted": paraphrase_templated,
    "solution_alone": lambda p: p.canonical_solution,
    "test_code_alone_renamed": lambda p: p.test.replace("candidate", "solution_under_test"),
    "solution_without_docstring": bare,
    "solution_without_docstring_renamed": lambda p: rename(bare(p)),
    "reformatted": lambda p: reformat(bare(p)),
    "changed_literals": lambda p: change_literals(bare(p)),
    "reordered_statements": lambda p: reorder(bare(p)),
    "comments_added": lambda p: add_comments(bare(p)),
    "type_hints_added": lambda p: hints(bare(p), add=True),
    "type_hints_removed": lambda p: hints(bare(p), add=False),
    "wrapped_in_class": lambda p: wrap_in_class(bare(p)),
    "in_chat_markdown": lambda p: chat(p, rename(bare(p))),
    "after_prose_with_an_unclosed_bracket": lambda p: "Notes (draft, see below:\n" + rename(bare(p)),
    "inside_a_string_literal": lambda p: f'SOURCE = """\n{rename(bare(p))}"""\nexec(SOURCE)\n',
    "json_escaped_in_text": lambda p: '{"code": ' + json.dumps(rename(bare(p))) + "}",
    "repl_transcript": lambda p: "".join((">>> " if not line.startswith((" ", "\t")) else "... ") + line + "\n"
                                         for line in rename(bare(p)).splitlines() if line.strip()),
    "numbered_listing": lambda p: "".join(f"{k + 1:3d}. {line}\n" for k, line in enumerate(rename(bare(p)).splitlines())),
    "solution_alone_as_completion_field": lambda p: {"prompt": "Complete the function below.",
                                                     "completion": p.canonical_solution},
    "solution_alone_in_chat_fence": lambda p: chat(p, p.canonical_solution),
    "dead_code_between_statements": lambda p: insert_dead_code(bare(p)),
    "mixed_junk_between_statements_renamed": lambda p: insert_mixed_junk(rename(bare(p))),
    "comprehension_unrolled_to_loop": lambda p: unroll_comprehensions(bare(p)),
    "loop_rolled_into_comprehension": lambda p: roll_loops(bare(p)),
    "search_loop_to_any_all": lambda p: search_to_any_all(bare(p)),
    "renamed_search_loop_to_any_all": lambda p: rename(search_to_any_all(bare(p))),
    "renamed_loop_rolled_or_unrolled": lambda p: rename(roll_loops(bare(p)) or unroll_comprehensions(bare(p)) or ""),
    "all_code_disguises_at_once": lambda p: add_comments(wrap_in_class(hints(change_literals(rename(bare(p))),
                                                                            add=False))),
}


# --- measurement -------------------------------------------------------------------------------
RESULTS: list[str] = []


def bench_line(name: str, value: float, target: str, ok: bool) -> None:
    """Kept for the end of the output, after the details."""
    RESULTS.append(f"BENCH {name} {value:.4g} {target} {'PASS' if ok else 'MISS'}")


SCANNED = [0, 0.0]  # rows scanned, seconds


def timed_scan(index: DecontamIndex, rows: list[object]) -> Contamination:
    t0 = time.process_time()  # CPU seconds: the machine is shared, wall time measures the neighbours
    found = index.scan(rows)
    SCANNED[0] += len(rows)
    SCANNED[1] += time.process_time() - t0
    return found


def caught(index: DecontamIndex, rows: list[tuple[str, object]]) -> dict[str, set[str]]:
    """Task id -> the signals that refuse its row for its own task (rows not refused for it left out)."""
    found = timed_scan(index, [r for _, r in rows])
    out = {t: {h.reason for h in found.rows.get(k, []) if h.task_id == t} for k, (t, _) in enumerate(rows)}
    return {t: v for t, v in out.items() if v}


def recall(index: DecontamIndex, problems: list[humaneval.Problem], show: int, wanted: set[str]) -> None:
    """Each disguise against the index: caught for its own task, and by which signal."""
    for name, make in ((n, m) for n, m in DISGUISES.items() if n in wanted):
        rows = [(p.task_id, row) for p in problems if (row := make(p))]
        hit = caught(index, rows)
        missed = [t for t, _ in rows if t not in hit]
        share = len(hit) / len(rows)
        bench_line(f"decontam_recall_{name}", share, f">={RECALL}", share >= RECALL)
        signals = Counter(r for v in hit.values() for r in v)
        print(f"  {name}: {len(hit)}/{len(rows)} caught (per signal: "
              + ", ".join(f"{r} {c}" for r, c in sorted(signals.items())) + ")"
              + (f"; missed {', '.join(missed[:show])}" + (" ..." if len(missed) > show else "") if missed else ""))


def mbpp_rows(data_dir: Path) -> list[tuple[str, dict]]:
    out = []
    for split in ("train", "validation", "prompt"):
        for p in mbpp.load(data_dir, split)[0]:
            out.append((p.task_id, {"prompt": p.text + "\n" + "\n".join(mbpp.tests_of(p)["asserts"]),
                                    "completion": p.canonical_solution}))
    return out


def false_refusals(index: DecontamIndex, data_dir: Path, show: int) -> None:
    rows = mbpp_rows(data_dir)
    found = timed_scan(index, [r for _, r in rows])
    by_source: dict[str, list[str]] = {}
    for k, hits in sorted(found.rows.items()):
        for src in {h.source for h in hits}:
            pairs = {f"{rows[k][0]}->{h.task_id}({h.reason})" for h in hits if h.source == src}
            by_source.setdefault(src, []).extend(sorted(pairs))
    he = {k for k, hits in found.rows.items() if any(h.source.startswith("humaneval") for h in hits)}
    share = len(he) / len(rows)
    bench_line("decontam_mbpp_clean_refused_for_humaneval", share, f"<={FALSE_REFUSALS}", share <= FALSE_REFUSALS)
    for src, pairs in sorted(by_source.items()):
        print(f"  {src}: {len(pairs)} hits: {', '.join(pairs[:show])}" + (" ..." if len(pairs) > show else ""))
    mb = {k: {h.reason for h in hits if h.source == "mbpp_test"} for k, hits in found.rows.items()}
    mb = {k: reasons for k, reasons in mb.items() if reasons}
    signals = sorted({r for reasons in mb.values() for r in reasons})
    by_signal = ", ".join(f"{r} {sum(r in v for v in mb.values())}" for r in signals)
    code_only = sum(v <= {"code", "statements"} for v in mb.values())
    print(f"  MBPP train/validation/prompt rows hitting an MBPP test problem (near-duplicates across splits, "
          f"measured): {len(mb)} of {len(rows)}; rows per signal: {by_signal}; by code signals only: {code_only}")


def plusgen_files(mbpp_dir: Path, into: Path) -> tuple[Path, Path]:
    """HumanEval+ and MBPP+ (test split) in evalplus format; problems the generator cannot handle are left out."""
    from engine.data import plusgen

    he = list(plusgen.humaneval_plus_records(humaneval.load()[0], n_plus=1, extra=False))
    mb = []
    for p in mbpp.load(mbpp_dir, "test")[0]:
        try:
            mb += list(plusgen.mbpp_plus_records([p], n_plus=1))
        except (TypeError, ValueError, KeyError, IndexError):
            continue
    paths = into / "HumanEvalPlus.jsonl", into / "MbppPlus.jsonl"
    for path, records in zip(paths, (he, mb), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"  plusgen: {len(he)} HumanEval+ and {len(mb)} MBPP+ records", file=sys.stderr)
    return paths


def stdlib_functions(limit: int = 4000) -> list[tuple[str, str]]:
    """Functions of the Python standard library (under 60 lines), a fixed sample: clean code from elsewhere."""
    import random
    import sysconfig

    out = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            src = path.read_text(encoding="utf-8")
            tree = ast.parse(src)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        out += [(f"{path.name}:{node.name}", ast.get_source_segment(src, node) or "") for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef) and (node.end_lineno or node.lineno) - node.lineno < 60]
    return random.Random(0).sample(out, min(limit, len(out)))


def stdlib_false_refusals(index: DecontamIndex, show: int) -> None:
    rows = stdlib_functions()
    found = timed_scan(index, [code for _, code in rows])
    he = {rows[k][0]: sorted({f"{h.task_id}({h.reason})" for h in hits if h.source.startswith("humaneval")})
          for k, hits in found.rows.items()}
    he = {k: v for k, v in he.items() if v}
    share = len(he) / len(rows)
    bench_line("decontam_stdlib_functions_refused_for_humaneval", share, f"<={FALSE_REFUSALS}", share <= FALSE_REFUSALS)
    listed = [f"{k}->{','.join(v)}" for k, v in sorted(he.items())]
    print(f"  {len(he)} of {len(rows)}: {', '.join(listed[:show])}" + (" ..." if len(listed) > show else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mbpp", type=Path, default=ROOT / "engine/pipelines/data/mbpp")
    ap.add_argument("--humaneval-plus", type=Path)
    ap.add_argument("--mbpp-plus", type=Path)
    ap.add_argument("--plusgen", action="store_true", help="build HumanEval+/MBPP+ files with plusgen")
    ap.add_argument("--show", type=int, default=12, help="missed problems / hits listed per line")
    ap.add_argument("--only", help="comma-separated disguises to measure (default: all of them)")
    args = ap.parse_args(argv)
    if args.plusgen:
        import tempfile

        args.humaneval_plus, args.mbpp_plus = plusgen_files(args.mbpp, Path(tempfile.mkdtemp(prefix="decontam-")))
    t0 = time.process_time()
    index = eval_index(args.mbpp, humaneval_plus=args.humaneval_plus, mbpp_plus=args.mbpp_plus)
    build = time.process_time() - t0
    bench_line("decontam_index_build_cpu_s", build, f"<={BUILD_S}", build <= BUILD_S)
    problems = humaneval.load()[0]
    t0 = time.perf_counter()
    wanted = set(args.only.split(",")) if args.only else set(DISGUISES)
    if wanted - set(DISGUISES):
        ap.error(f"--only: unknown disguises {', '.join(sorted(wanted - set(DISGUISES)))}")
    recall(index, problems, args.show, wanted)
    false_refusals(index, args.mbpp, args.show)
    stdlib_false_refusals(index, args.show)
    print(f"  scan time {time.perf_counter() - t0:.1f} s for {len(DISGUISES)} x {len(problems)} rows and the clean sets")
    rate = SCANNED[0] / SCANNED[1]
    bench_line("decontam_scan_rows_per_cpu_s", rate, f">={ROWS_PER_S}", rate >= ROWS_PER_S)
    print("\n".join(RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
