"""Decontamination: training data checked against the evaluation sets before any training.

Signals per training row, against every evaluation problem (HumanEval, MBPP test,
HumanEval+ / MBPP+ when their files are configured); each hit names its signal and the
problem's task id:

* ``ngram``: a shared run of ``ngram`` normalised words with the problem's statement
  or solution (verbatim copies, however embedded); ``statement``: the whole statement
  (five words or more) verbatim, for statements too short for an informative n-gram;
* ``docstring``: the row covers most of the problem statement's content words, weighted
  by rarity across the evaluation sets (catches rewording that keeps the substance);
* ``name``: the row defines or calls the problem's function name, and also shares a
  smaller part of its statement (a bare common name such as ``add`` is not enough);
* ``code``: the row holds most of the problem's code as normalised token n-grams
  (engine/data/codegrams.py: names, literals, comments, docstrings, annotations and layout
  abstracted), with enough rare structure to be evidence; a one-line solution counts only
  with a function name the problem defines (5+ characters: ``strlen``, ``encode_cyclic``);
* ``statements``: the row holds most of the problem's normalised statements, in any order
  and with anything between them;
* ``body``: a piece of the row (one of its strings, or a fenced block in one) is, for the
  most part, a problem's whole solution body as a normalised token stream: a one-line body
  (``return len(string)``) is too common to be evidence inside other code, but a row that is
  that body and little else is the solution;
* ``examples``: the row holds most of the literal values of a problem's examples or test
  asserts (``[1.0, 2.8, 3.0], 0.3``, ``'Hello world'``), or most of its calls with their results
  (``f(3, 7) == 1``), normalised (quotes, spacing, tuple or list: engine/data/example_literals.py), however the examples are
  worded around them and whatever the function is called.

Code is put in canonical shape first (engine/data/codeshape.py): junk statements dropped,
accumulating loops rolled into comprehensions, on both sides.

Training stages call :func:`require_clean`, which fails with the offending rows listed
unless the spec allows them explicitly.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.data.codegrams import CodeIndex, normalise
from engine.data.codeshape import canonical
from engine.data.example_literals import is_pair, literal_size, literals

WORD = re.compile(r"[a-z0-9_]+")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DEF = re.compile(r"\bdef\s+([A-Za-z_][A-Za-z0-9_]*)")
CALLED = re.compile(r"(?:\b([A-Za-z_][A-Za-z0-9_]*)\s*\()|`([A-Za-z_][A-Za-z0-9_]*)`")
STOP = frozenset("""a an the of to in on for and or is are be by as at it its if than that this with from into
each any all not no do does return returns write function python given list lists number numbers string strings
which whose should will can may must you your we our use using value values element elements def true false none
print example examples input output result those these their them they there then when where also such
only more most same other others one two goal task here have has had was were been being like make made
contain contains containing multiple properly within into onto after before every some many much very
note assume suppose following follows below above""".split())
# concept -> its common synonyms in task statements (a word maps to the first group naming it)
CONCEPTS = {
    "return": "returns returned give gives yield yields produce produces output outputs",
    "list": "lists sequence sequences array arrays collection collections vector vectors tuple tuples",
    "string": "strings text texts str sentence sentences phrase",
    "integer": "integers int ints numeral numerals natural",
    "element": "elements item items entry entries member members",
    "character": "characters char chars letter letters symbol symbols",
    "largest": "biggest greatest maximum max highest maximal",
    "smallest": "tiniest least minimum min lowest minimal",
    "first": "initial leading earliest",
    "last": "final trailing latest",
    "contain": "contains include includes including hold holds",
    "sum": "total totals summation",
    "count": "tally tallies counts",
    "find": "determine compute computes calculate calculates get gets obtain obtains finds",
    "check": "test tests verify verifies checks",
    "sorted": "ordered sort sorts order",
    "length": "size len",
    "remove": "delete deletes drop drops discard discards removes eliminate",
    "reverse": "reversed invert inverted flip flipped backwards",
    "split": "separate separates divide splits",
    "join": "concatenate concatenates combine combines merge merges joins",
    "unique": "distinct different",
    "duplicate": "duplicates repeated repeating",
    "equal": "same identical equals",
    "word": "words term terms",
    "implement": "write create define code",
    "number": "numbers value values",
    "given": "provided supplied",
    "each": "every",
    "be": "is are was were been being am",
    "positive": "above-zero nonnegative",
    "argument": "input inputs parameter parameters arg args",
}
# a stop word never becomes a content word by its synonym ('write' stays boilerplate, not 'implement')
SYNONYM = {w: c for c, group in reversed(CONCEPTS.items()) for w in group.split() if c in STOP or w not in STOP}
PHRASES = {"give back": "return", "gives back": "return", "whole number": "integer", "whole numbers": "integer",
           "happen to": "", "add up": "sum", "number of": "count", "less than": "below", "greater than": "above",
           "more than": "above", "fewer than": "below", "above zero": "positive"}
WORDING_FLOOR = (15.0, 3)  # rarity and count of the statement word n-grams matched (the shares: in the signals)
# HumanEval's docstrings are prose written for one problem; MBPP's one-line statements are templates whose
# twins across splits differ in a word ('... the given string to upper case' / 'lower case'): the word-order
# signals read an MBPP statement only from this many words on
WORDING_MIN = 20
SHORT_DOC = 0.9  # docstring: the share a statement of 5 to 7 content words must have matched (8+: doc_threshold)
NAMED_CODE = 0.9  # code too short to be evidence alone counts when nearly all of it is there with the problem's names
# examples: share of a problem's example literal weight, that weight (nats of rarity), distinct literals
EXAMPLES_FLOOR, EXAMPLE_SIZE = (0.5, 11.0, 2), 8
BODY_SHARE, BODY_MIN = 0.75, 4  # a piece of a row that is (75%+ of its tokens) a whole solution body of 4+ tokens
FENCED = re.compile(r"```[^\n`]*\n([\s\S]*?)```")


@dataclass(frozen=True)
class EvalItem:
    """One evaluation problem as the checker sees it."""

    source: str          # humaneval, mbpp_test, humaneval_plus, mbpp_plus
    task_id: str
    name: str            # its function name ('' if unknown)
    statement: str       # the natural-language task (docstring / text), examples removed
    code: str            # prompt code + reference solution
    solution: str = ""   # the reference solution alone, when it is a separate piece (HumanEval's body)
    examples: tuple[str, ...] = ()  # texts whose literals are the problem's examples (prompt, test asserts)


@dataclass
class Hit:
    source: str
    task_id: str
    reason: str          # ngram statement docstring name code statements wording concepts body examples
    score: float
    detail: str = ""


@dataclass
class Contamination:
    """Rows that hit, with their hits (row index -> hits)."""

    rows: dict[int, list[Hit]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def describe(self, limit: int = 20) -> str:
        """One line per row: the problem it hits hardest, with every signal that hit it."""
        lines = []
        for row, hits in list(sorted(self.rows.items()))[:limit]:
            by_task: dict[tuple[str, str], list[Hit]] = defaultdict(list)
            for h in sorted(hits, key=lambda x: (-round(x.score, 2), x.reason)):  # as printed, ties by name
                by_task[(h.source, h.task_id)].append(h)
            (source, task), top = min(by_task.items(), key=lambda kv: (-len(kv[1]), -round(kv[1][0].score, 2), kv[0]))
            why = "; ".join(f"{h.reason}, score {h.score:.2f}{', ' + h.detail if h.detail else ''}" for h in top)
            others = f" and {len(by_task) - 1} more problems" if len(by_task) > 1 else ""
            lines.append(f"row {row}: {source} {task} ({why}){others}")
        more = len(self.rows) - limit
        return "\n".join(lines + ([f"... and {more} more rows"] if more > 0 else []))


@dataclass(frozen=True)
class CodeSignal:
    """A code index and how much of one problem's code a row must hold to be refused for it."""

    name: str            # the refusal reason: code | statements
    index: CodeIndex
    coverage: float      # share of the problem's feature weight found in the row
    weight: float        # that weight, in nats of rarity: enough structure to be evidence
    count: int           # distinct features matched: a one-line solution is not evidence
    what: str


class ContaminatedData(ValueError):
    """Training data overlaps an evaluation set and the spec does not allow it."""


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def stem(word: str) -> str:
    """Crude suffix stripping so that 'ignored'/'ignore', 'groups'/'group' meet."""
    for suffix in ("ing", "ed", "es", "s", "e"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def concept_words(toks: list[str]) -> list[str]:
    """Words with synonyms put on one name (``give back``/``yield`` -> return, ``sequence``/``array`` -> list):
    a paraphrase that swaps words for their common synonyms keeps the same concepts."""
    out, k = [], 0
    while k < len(toks):
        pair = PHRASES.get(" ".join(toks[k:k + 2]))
        if pair is not None:
            out.append(pair)
            k += 2
            continue
        out.append(SYNONYM.get(toks[k], toks[k]))
        k += 1
    return out


def wording(text: str) -> list[str]:
    """The stemmed concept-word stream of prose, in order, every word kept (their order is the evidence)."""
    return [stem(w) for w in concept_words(words(text)) if w]


def concepts(text: str) -> list[str]:
    """:func:`wording` without function words (a paraphrase swaps those freely); the concepts a stop word
    names (return, list, number) stay."""
    return [stem(w) for w in concept_words(words(text)) if w and (w in CONCEPTS or w not in STOP) and not w.isdigit()]


def content_words(text: str) -> set[str]:
    """Stemmed concepts that carry a task's meaning (no stop words, no numbers)."""
    return {stem(w) for w in concept_words(words(text)) if len(w) > 2 and w not in STOP and not w.isdigit()}


def statement_of(prompt: str) -> str:
    """The docstring of a HumanEval-style prompt (MBPP+: the module's), doctests and asserts removed."""
    text = prompt
    for source in (prompt, prompt + "\n    pass\n"):
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        docs = [d for node in ast.walk(tree) if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef))
                and (d := ast.get_docstring(node))]
        if docs:
            text = docs[-1]
            break
    keep, in_example = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith((">>>", "assert ")):
            in_example = True  # a doctest or an MBPP+ assert: skip it and its output up to a blank line
        elif not stripped:
            in_example = False
        if not in_example:
            keep.append(line)
    return "\n".join(keep).strip()


def informative(gram: tuple[str, ...], min_content: int) -> bool:
    """An n-gram with enough distinct content words to mean something (not a number run, not boilerplate)."""
    return len({w for w in gram if w not in STOP and not w.isdigit() and len(w) > 1}) >= min_content


def code_like(name: str) -> bool:
    """A name written as code (prime_fib, sumTo): a paraphrase that renames the function drops it from the
    statement, where a plain word (median, longest) names the concept and stays."""
    return "_" in name.strip("_") or name != name.lower()


def specific(name: str) -> bool:
    """A function name unlikely to be chosen by chance (has_close_elements, not add or check)."""
    return len(name) >= 10 and code_like(name)


def tokens_of(code: str) -> list[str]:
    """The canonical normalised token stream of ``code``, without the separators at its ends."""
    stream = normalise(canonical(code))
    lo, hi = 0, len(stream)
    while lo < hi and stream[lo] in (";", ":"):
        lo += 1
    while hi > lo and stream[hi - 1] == ";":
        hi -= 1
    return stream[lo:hi]


def leaves(row: Any) -> list[str]:
    """The strings inside a training row (each message, prompt, completion)."""
    if isinstance(row, str):
        return [row]
    if isinstance(row, dict):
        row = list(row.values())
    return [s for v in row for s in leaves(v)] if isinstance(row, (list, tuple)) else []


def row_text(row: Any) -> str:
    """Every string inside a training row (str, dict, list: prompts, messages, chosen, rejected...)."""
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        return "\n".join(row_text(v) for v in row.values())
    if isinstance(row, (list, tuple)):
        return "\n".join(row_text(v) for v in row)
    return ""


class DecontamIndex:
    """An index of evaluation problems; :meth:`scan` finds training rows that overlap them."""

    def __init__(self, items: list[EvalItem], ngram: int = 10, doc_threshold: float = 0.7,
                 name_doc_threshold: float = 0.5, min_content: int = 5, code_ngram: int = 8,
                 code_floor: tuple[float, float, int] = (0.6, 25.0, 6),
                 statement_floor: tuple[float, float, int] = (0.6, 15.0, 3),
                 wording_floor: tuple[float, int] = WORDING_FLOOR) -> None:
        if not items:
            raise ValueError("decontamination index: no evaluation problems to check against")
        self.items, self.n = items, ngram
        self.doc_threshold, self.name_doc_threshold = doc_threshold, name_doc_threshold
        self.min_content = min_content
        worded = [i for i, it in enumerate(items)
                  if it.source.startswith("humaneval") or len(wording(it.statement)) >= WORDING_MIN]
        units = [(i, code) for i, it in enumerate(items) for code in dict.fromkeys((it.code, it.solution)) if code]
        args = [c for _, c in units], [i for i, _ in units], [items[i].task_id for i, _ in units]
        self.code_signals = [
            CodeSignal("code", CodeIndex(*args, n=code_ngram), *code_floor, f"normalised code {code_ngram}-grams"),
            CodeSignal("statements", CodeIndex(*args, n=0), *statement_floor, "normalised statements"),
            *(CodeSignal(name, CodeIndex([items[i].statement for i in worded], worded,
                                         [items[i].task_id for i in worded], n=n, shapes_of=lambda t, f=f: [f(t)]),
                         cover, *wording_floor, f"statement {what} {n}-grams (synonyms on one name)")
              for name, f, n, cover, what in (("wording", wording, 3, 0.35, "word"),
                                              ("concepts", concepts, 2, 0.4, "content-word"))),
        ]
        self.bodies: dict[tuple[str, ...], set[int]] = defaultdict(set)  # whole solution bodies (not functions)
        for i, it in enumerate(items):
            for shape in dict.fromkeys((it.solution, canonical(it.solution))) if it.solution else ():
                body = tokens_of(shape)
                if len(body) >= BODY_MIN and "def" not in body:
                    self.bodies[tuple(body)].add(i)
        self.body_sizes = sorted({len(b) for b in self.bodies}, reverse=True)
        self.example_units = self.index_examples(items)
        self.grams: dict[tuple[str, ...], set[int]] = defaultdict(set)
        self.names: dict[str, set[int]] = defaultdict(set)
        self.defines: dict[str, set[int]] = defaultdict(set)  # functions the problem's code defines (5+ chars)
        for i, it in enumerate(items):
            for name in DEF.findall(it.code):
                if len(name) >= 5:
                    self.defines[name].add(i)
        self.statements = [" ".join(words(it.statement)) for it in items]
        self.content: list[Counter[str]] = []
        df: Counter[str] = Counter()
        for i, it in enumerate(items):
            for text in (it.statement, it.code):
                toks = words(text)
                for k in range(len(toks) - ngram + 1):
                    gram = tuple(toks[k:k + ngram])
                    if informative(gram, min_content):
                        self.grams[gram].add(i)
            if it.name:
                self.names[it.name].add(i)
            c = Counter(content_words(it.statement) - ({stem(it.name.lower())} if code_like(it.name) else set()))
            self.content.append(c)
            df.update(set(c))
        self.idf = {w: math.log(1 + len(items) / d) for w, d in df.items()}
        self.by_word: dict[str, set[int]] = defaultdict(set)
        for i, c in enumerate(self.content):
            for w in c:
                self.by_word[w].add(i)

    def index_examples(self, items: list[EvalItem]) -> list[tuple[int, dict[Any, float]]]:
        """(problem, its example literals with their weight) per example text, the calls with their results
        apart (a row that keeps the values but not the calls is matched on the values); ``by_literal`` finds them.
        Weight: rarity across the problems (a benchmark's variants counted once; a literal in more than 2%
        of them is not indexed), scaled down for literals under ``EXAMPLE_SIZE`` characters ((1, 1), 235)."""
        units = [(i, part) for i, it in enumerate(items) for text in it.examples for lits in [literals(text)]
                 for part in ({k for k in lits if not is_pair(k)}, {k for k in lits if is_pair(k)}) if part]
        holders: dict[Any, set[str]] = defaultdict(set)
        for i, lits in units:
            for key in lits:
                holders[key].add(items[i].task_id)
        tasks = len({it.task_id for it in items})
        weight = {k: math.log(1 + tasks / len(t)) * min(1.0, literal_size(k) / EXAMPLE_SIZE)
                  for k, t in holders.items() if len(t) <= max(2, 0.02 * tasks)}
        out = [(i, {k: weight[k] for k in lits if k in weight}) for i, lits in units]
        self.by_literal: dict[Any, set[int]] = defaultdict(set)
        for u, (_, lits) in enumerate(out):
            for key in lits:
                self.by_literal[key].add(u)
        return out

    def example_hits(self, text: str) -> dict[tuple[int, str], Hit]:
        """Problems most of whose example literals (rarity-weighted) the text holds, in any wording."""
        found = literals(text)
        share, floor, count = EXAMPLES_FLOOR
        hits: dict[tuple[int, str], Hit] = {}
        for u in sorted(set().union(*(self.by_literal.get(k, set()) for k in found)) if found else ()):
            i, lits = self.example_units[u]
            matched = [w for k, w in lits.items() if k in found]
            cover = sum(matched) / sum(lits.values())
            old = hits.get((i, "examples"))
            whole = any(literal_size(k) >= EXAMPLE_SIZE for k in lits if k in found)  # 1100, 110, '1000' alone: no
            if cover >= share and sum(matched) >= floor and len(matched) >= count and whole \
                    and (not old or cover > old.score):
                it = self.items[i]
                what = "calls with their results" if is_pair(next(iter(lits))) else "literals"
                hits[(i, "examples")] = Hit(it.source, it.task_id, "examples", cover,
                                            f"{len(matched)} example {what}, rarity {sum(matched):.0f}")
        return hits

    def doc_score(self, i: int, row_words: set[str]) -> float:
        """IDF-weighted share of problem i's statement words found in the row."""
        c = self.content[i]
        total = sum(self.idf[w] for w in c)
        return sum(self.idf[w] for w in c if w in row_words) / total if total else 0.0

    def check(self, text: str, pieces: Iterable[str] = ()) -> list[Hit]:
        """Every (problem, signal) the text hits; ``pieces``: the row's strings, when it has several."""
        toks = words(text)
        hits: dict[tuple[int, str], Hit] = {}
        for k in range(len(toks) - self.n + 1):
            for i in self.grams.get(tuple(toks[k:k + self.n]), ()):
                hits.setdefault((i, "ngram"), Hit(self.items[i].source, self.items[i].task_id, "ngram", 1.0,
                                                  " ".join(toks[k:k + self.n])))
        row_words = content_words(text)
        flat = " " + " ".join(toks) + " "
        candidates = set().union(*(self.by_word.get(w, set()) for w in row_words)) if row_words else set()
        called = {a or b for a, b in CALLED.findall(text)}  # used as code: f(...) or `f`
        names = called | {w for w in IDENT.findall(text) if specific(w)}
        named = set().union(*(self.names.get(nm, set()) for nm in names)) if names else set()
        for i in candidates | named:
            it = self.items[i]
            score = self.doc_score(i, row_words)
            st = self.statements[i]
            if st.count(" ") >= 4 and f" {st} " in flat:
                hits[(i, "statement")] = Hit(it.source, it.task_id, "statement", 1.0, "the statement, verbatim")
            size = len(self.content[i])  # a short statement must be matched almost whole
            if size >= self.min_content and score >= (self.doc_threshold if size >= 8 else max(self.doc_threshold, SHORT_DOC)):
                hits[(i, "docstring")] = Hit(it.source, it.task_id, "docstring", score)
            enough = score >= self.name_doc_threshold and len(self.content[i]) >= 3
            if i in named and (enough or (specific(it.name) and score >= 0.3)):
                hits[(i, "name")] = Hit(it.source, it.task_id, "name", score, f"defines or calls {it.name}")
        hits.update(self.code_hits(text, set().union(*(self.defines.get(nm, set()) for nm in names))))
        hits.update(self.body_hits([text, *pieces]))
        hits.update(self.example_hits(text))
        return list(hits.values())

    def code_hits(self, text: str, named: set[int]) -> dict[tuple[int, str], Hit]:
        """Hits of the code signals; ``named``: the problems one of whose functions the row defines or calls."""
        hits: dict[tuple[int, str], Hit] = {}
        streams = {"code": normalise(canonical(text), unpack=True), "wording": wording(text),
                   "concepts": concepts(text)}
        for sig in self.code_signals:
            stream = streams.get(sig.name) or streams["code"]
            matches = sig.index.matches(stream, min(sig.coverage, NAMED_CODE))
            for m in sorted(matches, key=lambda m: (round(m.coverage, 6), round(m.weight, 6), -m.unit)):  # best last
                i = sig.index.owners[m.unit]
                it = self.items[i]
                strong = m.coverage >= sig.coverage and m.weight >= sig.weight and m.grams >= sig.count
                if strong or (sig.name == "code" and i in named and m.coverage >= NAMED_CODE):
                    hits[(i, sig.name)] = Hit(it.source, it.task_id, sig.name, m.coverage,
                                              f"{m.grams} {sig.what}, rarity {m.weight:.0f}"
                                              + ("" if strong else ", under a function name the problem defines"))
        return hits

    def body_hits(self, texts: list[str]) -> dict[tuple[int, str], Hit]:
        """Hits of pieces that are mostly one whole solution body (each text, and each fenced block in it)."""
        hits: dict[tuple[int, str], Hit] = {}
        for piece in dict.fromkeys(p for t in texts for p in (t, *FENCED.findall(t))):
            stream = tokens_of(piece)
            for size in self.body_sizes:
                if size > len(stream) or size < BODY_SHARE * len(stream):
                    continue
                for k in range(len(stream) - size + 1):
                    for i in self.bodies.get(tuple(stream[k:k + size]), ()):
                        it = self.items[i]
                        hits.setdefault((i, "body"), Hit(it.source, it.task_id, "body", size / len(stream),
                                                         f"the whole solution body ({size} normalised tokens)"))
        return hits

    def scan(self, rows: Iterable[Any]) -> Contamination:
        found = Contamination()
        for r, row in enumerate(rows):
            hits = self.check(row_text(row), leaves(row) if not isinstance(row, str) else ())
            if hits:
                found.rows[r] = hits
        return found


def humaneval_items(path: Path | None = None, source: str = "humaneval") -> list[EvalItem]:
    from engine.data import humaneval

    problems, _ = humaneval.load(path)
    return [EvalItem(source, p.task_id, p.entry_point, statement_of(p.prompt), p.prompt + p.canonical_solution,
                     p.canonical_solution, (p.prompt, p.test)) for p in problems]


def mbpp_test_items(data_dir: Path) -> list[EvalItem]:
    from engine.data import mbpp

    problems, _ = mbpp.load(Path(data_dir), "test")
    return [EvalItem("mbpp_test", p.task_id, p.entry_point, p.text, p.canonical_solution,
                     examples=("\n".join(mbpp.tests_of(p)["asserts"]),)) for p in problems]


def plus_items(path: Path, source: str) -> list[EvalItem]:
    """Problems of an evalplus JSONL(.gz) file (HumanEvalPlus / MbppPlus), read by evalplus's own loader."""
    from engine.data import evalplus

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{source} file {path} not found (evalplus release JSONL, e.g. HumanEvalPlus.jsonl.gz)")
    return [EvalItem(source, t.task_id, t.entry_point, statement_of(t.prompt), t.prompt + t.canonical_solution,
                     t.canonical_solution, (t.prompt,)) for t in evalplus.load(path, mbpp=source == "mbpp_plus")]


def eval_index(mbpp_dir: Path | str | None, humaneval_path: Path | str | None = None,
               humaneval_plus: Path | str | None = None, mbpp_plus: Path | str | None = None,
               **kw: Any) -> DecontamIndex:
    """The index of every evaluation set pmat reports on (plus variants when configured; paths as the
    spec gives them, None or '' for not configured)."""
    items = humaneval_items(Path(humaneval_path) if humaneval_path else None)
    if mbpp_dir:
        items += mbpp_test_items(Path(mbpp_dir))
    if humaneval_plus:
        items += plus_items(Path(humaneval_plus), "humaneval_plus")
    if mbpp_plus:
        items += plus_items(Path(mbpp_plus), "mbpp_plus")
    return DecontamIndex(items, **kw)


def require_clean(rows: list[Any], index: DecontamIndex, *, allow: bool | Iterable[int] = False,
                  what: str = "training data", warn: Any = None) -> Contamination:
    """Fail listing the rows that overlap evaluation problems, unless allowed explicitly.

    ``allow`` True lets every hit through; a collection of row indices lets those rows
    through. Allowed hits are still returned (and passed to ``warn(message)`` if given) so
    the stage can record them.
    """
    found = index.scan(rows)
    allowed = set(range(len(rows))) if allow is True else set(allow or ())
    blocked = Contamination({r: h for r, h in found.rows.items() if r not in allowed})
    if blocked:
        raise ContaminatedData(f"{what}: {len(blocked.rows)} of {len(rows)} rows overlap evaluation problems "
                               f"(allow them explicitly in the spec to proceed):\n{blocked.describe()}")
    if found and warn is not None:
        warn(f"{what}: {len(found.rows)} rows overlap evaluation problems, allowed by the spec:\n{found.describe()}")
    return found
