"""The sandbox's value channel: what a program returns crosses as plain data, rebuilt on the
trusted side as the type and value it would be in-process, under decoding budgets."""

from __future__ import annotations

import decimal

import pytest
from test_sandbox import run, sandbox_pool  # noqa: F401 - sandbox_pool: the fixture `pool`

from engine.sandbox.pool import Job, SandboxPool


def test_values_cross_as_plain_data(pool: SandboxPool) -> None:
    program = ("from collections import Counter, namedtuple\nP = namedtuple('P', 'x y')\n"
               "def f(xs):\n    xs.append(9)\n    return Counter(xs), P(1, 2), {1, 2}, b'ab', 2 ** 2000, float('inf')\n")
    tests = ("xs = [1, 1]\nc, p, s, b, big, inf = f(xs)\nassert xs == [1, 1, 9]\n"
             "assert c == {1: 2, 9: 1} and type(c).__name__ == 'Counter'\nassert p == (1, 2) and s == {1, 2} and b == b'ab'\n"
             "assert big == 2 ** 2000 and inf == float('inf')\n")
    assert run(pool, program, tests).passed


def test_objects_stay_handles(pool: SandboxPool) -> None:
    program = ("class Node:\n    def __init__(self, v):\n        self.v = v\n"
               "def value(n):\n    return n.v\n")
    assert pool.run(Job(program, "assert value(root) == 5\n", setup="root = Node(5)\n")).passed
    assert run(pool, program, "assert Node(5) == Node(5)\n").status == "failed"  # identity only


def test_lazy_iterables_iterate_but_do_not_equal_lists(pool: SandboxPool) -> None:
    program = ("def evens(n):\n    return (i for i in range(n) if i % 2 == 0)\n"
               "def doubled(xs):\n    return map(lambda x: 2 * x, xs)\n"
               "def keys(d):\n    return d.keys()\n")
    assert run(pool, program, "assert list(evens(5)) == [0, 2, 4]\nassert sorted(doubled([2, 1])) == [2, 4]\n"
                              "assert list(doubled(evens(3))) == [0, 4]\nassert keys({1: 2}) == {1}\n").passed
    assert run(pool, program, "assert doubled([1]) == [2]\n").status == "failed"  # a map is not a list


def test_remote_stop_iteration_cannot_end_a_test_early(pool: SandboxPool) -> None:
    program = "def ok(x):\n    raise StopIteration\n"
    v = run(pool, program, "assert all(map(ok, [1, 2, 3]))\n")
    assert v.status == "error" and v.error_type == "StopIteration"


def test_values_are_materialised_with_in_process_truthiness_and_equality(pool: SandboxPool) -> None:
    """Issue 15 class 3: a falsy value must stay falsy on the trusted side (`assert f(x)`)."""
    program = ("from collections import deque, Counter, OrderedDict, namedtuple, defaultdict\n"
               "P = namedtuple('P', 'x y')\nclass No:\n    def __bool__(self):\n        return False\n"
               "def empty_range():\n    return range(0)\ndef keys():\n    return {}.keys()\n"
               "def empty_deque():\n    return deque()\ndef no():\n    return No()\n"
               "def values():\n    return {1: 2}.values()\ndef gen():\n    return (i for i in [])\n")
    for call in ("empty_range()", "keys()", "empty_deque()", "no()"):
        assert run(pool, program, f"assert {call}\n").status in ("failed", "error"), call
    tests = ("assert range(1, 5, 2) == __import__('builtins').range(1, 5, 2) and not empty_range()\n"
             "assert keys() == set() and type(keys()) is type({}.keys())\n"
             "assert list(values()) == [2] and values() != [2]\n"
             "assert gen() != [] and list(gen()) == [] and bool(gen())\n")
    assert run(pool, program, tests).passed
    program += ("def many():\n    d = defaultdict(list)\n    d[1].append(2)\n"
                "    return Counter('aab'), OrderedDict(a=1), d, P(1, 2), deque([1], maxlen=3), bytearray(b'x')\n")
    tests = ("import collections\nc, od, dd, p, dq, ba = many()\n"
             "assert type(c) is collections.Counter and c == {'a': 2, 'b': 1}\n"
             "assert type(od) is collections.OrderedDict and type(dd) is collections.defaultdict and dd[1] == [2]\n"
             "assert p == (1, 2) and p.x == 1 and p._fields == ('x', 'y')\n"
             "assert dq == collections.deque([1]) and dq.maxlen == 3 and type(ba) is bytearray\n")
    assert run(pool, program, tests).passed


def test_decoding_is_budgeted_before_it_builds() -> None:
    """Issue 15 class 5: a frame of brackets is refused on a count of its bytes, not decoded."""
    import time

    from engine.sandbox import wire

    frame = b"[" * (wire.MAX_CONTAINERS + 1)
    start = time.monotonic()
    with pytest.raises(wire.ProtocolError, match="containers"):
        wire.loads(frame)
    assert time.monotonic() - start < 0.5
    with pytest.raises(wire.ProtocolError, match="items"):
        wire.decode({"l": [0] * (wire.MAX_ITEMS + 1)}, lambda *_: None)
    hostile = [{"npl": ["a"] * 5000, "dtype": "<U4096", "shape": [5000]},  # 80 MB from 30 KB of JSON
               {"npl": [], "dtype": "<U1", "shape": [10**9]}, {"npl": [1], "dtype": "<U1", "shape": [1]},
               {"npl": ["a"], "dtype": "<i8", "shape": [1]}, {"date": [2020, 13, 1]}, {"arr": "Z", "data": ""},
               {"arr": "d", "data": "AAA="}, {"re": "(", "flags": 0}, {"tzv": {"off": {"td": [2, 0, 0]}}}]
    for enc in hostile:
        with pytest.raises(wire.ProtocolError):
            wire.decode(enc, lambda *_: None)


# every value the program may return, built the same way on both sides: the trusted side's copy
# must equal it and have its type (numpy arrays: dtype, shape and items)
STDLIB_VALUES = {
    "np_str": "np.array([['a', 'bc'], ['', 'déf']])",
    "np_bytes": "np.array([b'a', b'bc\\x00x'])",
    "np_object": "np.array(['a', 1, None, [2, 3]], dtype=object)",
    "np_datetime": "np.array(['2020-01-02', '1999-12-31'], dtype='datetime64[D]')",
    "np_empty_str": "np.zeros((0, 3), dtype='<U4')",
    "np_scalar_datetime": "np.datetime64('2020-01-02T03:04')",
    "date": "datetime.date(2020, 1, 2)",
    "datetime": "datetime.datetime(2020, 1, 2, 3, 4, 5, 6)",
    "datetime_tz": "datetime.datetime(2020, 1, 2, 3, tzinfo=datetime.timezone(datetime.timedelta(hours=-5), 'EST'))",
    "datetime_utc": "datetime.datetime(2020, 1, 2, tzinfo=datetime.timezone.utc)",
    "time": "datetime.time(23, 59, 1, 5, fold=1)",
    "timedelta": "datetime.timedelta(days=-3, seconds=7, microseconds=9)",
    "decimal": "decimal.Decimal('-1.2300E+5')",
    "decimal_nan": "decimal.Decimal('NaN')",
    "fraction": "fractions.Fraction(-3, 9)",
    "complex": "complex(1.5, -2)",
    "array": "array.array('d', [1.5, -2.0])",
    "array_str": "array.array('u', 'hé')",
    "chainmap": "collections.ChainMap({'a': 1}, {'b': 2, 'a': 3})",
    "ordereddict": "collections.OrderedDict([('b', 1), ('a', 2)])",
    "pattern": "re.compile(b'a+', re.I)",
    "slice": "slice(1, None, -2)",
    "frozenset": "frozenset({1, 'a'})",
    "bytes": "b'\\x00\\xff'",
    "intenum_as_int": "http.HTTPStatus.OK",
}
IMPORTS = "import array, collections, datetime, decimal, fractions, http, re\nimport numpy as np\n"


def _same(got: object, want: object) -> bool:
    import numpy as np

    if isinstance(want, np.ndarray):
        return (type(got) is np.ndarray and got.dtype == want.dtype and got.shape == want.shape
                and got.tolist() == want.tolist())
    if type(want).__module__ == "http":  # an IntEnum member travels as its int, equal as in-process
        return got == want and type(got) is int
    if isinstance(want, decimal.Decimal) and want.is_nan():
        return type(got) is decimal.Decimal and got.is_nan()
    return got == want and type(got) is type(want) and repr(got) == repr(want)


def test_stdlib_and_numpy_values_round_trip_as_in_process() -> None:
    """Each value the encoder knows is rebuilt as the same type and value (fast: no pool)."""
    from engine.sandbox import wire

    ns: dict = {}
    exec(IMPORTS, ns)  # noqa: S102 - the test's own literals
    for name, expr in STDLIB_VALUES.items():
        value = eval(expr, ns)  # noqa: S307
        got = wire.decode(wire.loads(wire.pack_msg(wire.encode(value, lambda v: 0))[4:]), lambda *_: None)
        assert _same(got, value), (name, got, value)


def test_numpy_strings_and_stdlib_values_compare_as_in_process(pool: SandboxPool) -> None:
    """A numpy array of strings used to end the child (SIGKILL); a date compared unequal."""
    names = list(STDLIB_VALUES)
    program = IMPORTS + "".join(f"def v_{n}():\n    return {STDLIB_VALUES[n]}\n" for n in names)
    tests = (IMPORTS + "import numpy\n"
             + "".join(f"w = {STDLIB_VALUES[n]}\ng = v_{n}()\nassert (g == w).all() and g.dtype == w.dtype "
                       f"and g.shape == w.shape if isinstance(w, numpy.ndarray) else g == w or g != g, {n!r}\n"
                       for n in names if n != "decimal_nan"))
    v = run(pool, program, tests)
    assert v.passed, v


def test_a_malformed_reply_is_a_clean_verdict(pool: SandboxPool) -> None:
    """A reply the trusted side cannot decode is named as such, not as the kill that followed."""
    program = ("import sys\nw = sys.modules['engine.sandbox.wire']\nw.encode = lambda v, r, *a: {'zz': 1}\n"
               "def add(a, b):\n    return 3\n")
    v = run(pool, program)
    assert (v.status, v.error_type) == ("error", "ProtocolError") and "zz" in v.detail, v


def test_handles_of_always_true_objects_are_true(pool: SandboxPool) -> None:
    """A re.Match, an enum member or a plain instance is true in-process (no __bool__, no __len__):
    `assert f(x)` passes as it would there; one with __len__ or __bool__ still has no truth value."""
    program = ("import re, enum\nclass C(enum.Enum):\n    A = 0\nclass Plain:\n    pass\n"
               "class Empty:\n    def __len__(self):\n        return 0\n"
               "def m(s):\n    return re.match('a+', s)\ndef c():\n    return C.A\ndef plain():\n    return Plain()\n"
               "def empty():\n    return Empty()\n")
    tests = ("assert m('aab') and m('aab').group(0) == 'aa' and m('aab').span() == (0, 2)\n"
             "assert m('x') is None and c() and plain() and c() != 0\n")
    assert run(pool, program, tests).passed
    assert run(pool, program, "assert empty()\n").error_type == "TypeError"
