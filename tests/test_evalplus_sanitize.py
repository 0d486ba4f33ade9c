"""pmat's sanitizer against evalplus's own ``sanitize`` (tree-sitter) on realistic model outputs.

The corpus is written here (chat prose around fenced code, several blocks, demo code,
``if __name__ == "__main__":``, a base model running on into the next problem, decorated and
duplicate definitions, comments at every depth) and combined at random into many more.
"""

from __future__ import annotations

import random

import pytest

from engine.data.postprocess import code_extract, sanitize

evalplus_sanitize = pytest.importorskip("evalplus.sanitize")

FUNC = '''def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b'''
HELPER = '''def _helper(xs):
    total = 0
    for x in xs:
        total += x  # running sum
    return total'''
USES_HELPER = '''def add(a, b):
    # uses the helper
    return _helper([a, b])
    # trailing comment in the body
'''
NO_RETURN = '''def show(x):
    print(x)'''
CLASS = '''class Stack:
    def __init__(self):
        self.items = []

    def push(self, x):
        self.items.append(x)
        # nothing returned
  # shallow comment'''
CONST = "LIMIT = 10**6"
TUPLE = "lo, hi = 0, 10"
ATTR = "math.tau = LIMIT"
IMPORTS = "import math\nfrom typing import List, Tuple\nfrom __future__ import annotations"
MAIN = '''if __name__ == "__main__":
    print(add(1, 2))
    assert add(2, 2) == 4'''
DEMO = "print(add(3, 4))\nassert add(1, 1) == 2"
DECORATED = '''@functools.lru_cache(maxsize=None)
def add(a, b):
    return a + b'''
NEXT_PROBLEM = '''

def next_task(s: str) -> str:
    """ Return the string reversed.
    >>> next_task('ab')
    'ba'
    """
'''
PROSE = ["Here is the implementation:", "Sure! Below is a Python function that solves the problem.",
         "This works because we iterate once; the complexity is O(n).", "### Explanation",
         "1. First we check the input.\n2. Then we `return` the sum.", "Let me know if you need anything else!",
         "def is a keyword in Python, so the function starts with it:"]
ASYNC = "async def add(a, b):\n    return a + b"
ANN = "CACHE: dict = {}\nCOUNT: int"
LAMBDA = "add = lambda a, b: a + b"
NESTED = '''def add(a, b):
    def inner(x):
        return x
    if a:
        return inner(a) + b
    # fall through
    return b  # done'''
BROKEN = "def add(a, b)\n    return a + b"
PIECES = [FUNC, HELPER, USES_HELPER, NO_RETURN, CLASS, CONST, TUPLE, ATTR, IMPORTS, MAIN, DEMO, DECORATED,
          NEXT_PROBLEM, ASYNC, ANN, LAMBDA, NESTED, BROKEN]

HAND = [
    f"{PROSE[1]}\n\n```python\n{FUNC}\n```\n\n{PROSE[2]}",
    f"```python\n{IMPORTS}\n\n{HELPER}\n\n{USES_HELPER}\n{MAIN}\n```",
    f"{PROSE[0]}\n```python\n{FUNC}\n```\nAnd a test:\n```python\n{DEMO}\n```",
    f"{FUNC}\n{NEXT_PROBLEM}",  # a base model running on
    f"    return a + b\n{NEXT_PROBLEM}",  # a completion body alone
    f"```\n{CLASS}\n\n{FUNC}\n```",
    f"{DECORATED}\n\n{FUNC}",
    f"{FUNC}\n\n{FUNC.replace('a + b', 'b + a')}",
    f"{CONST}\n{ATTR}\n{TUPLE}\n{FUNC.replace('a + b', 'a + b + LIMIT + lo')}",
    "",
    "no code at all",
    "x = 1",
    f"```python\n{BROKEN}\n```",
    f"{NESTED}\n\n# the end",
    f"{LAMBDA}\n{FUNC}",
    f"{ANN}\n{ASYNC}",
    f"<think>\nI should add.\n</think>\n```python\n{FUNC}\n```",
    "def add(a, b): return a + b",
    f"def add(a, b):\n\treturn a + b  # tab\n\n\t# tab comment\n{DEMO}",
    f"{FUNC}\r\n\r\nprint(1)\r\n",
    f"```python\ndef add(a, b):\n    s = f'{{a}}{{b}}'\n    return int(s) - _helper(a)\n```\n{HELPER}",
]


def _random_outputs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    outs = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 6)):
            piece = rng.choice(PIECES + PROSE)
            if rng.random() < 0.3:
                piece = f"```{rng.choice(['python', 'py', ''])}\n{piece}\n```"
            parts.append(piece)
        outs.append(rng.choice(["\n", "\n\n", "\n\n\n"]).join(parts) + rng.choice(["", "\n", "\n\n"]))
    return outs


@pytest.mark.parametrize("i", range(len(HAND)))
def test_hand_written_outputs_sanitize_as_evalplus_does(i: int) -> None:
    text = HAND[i]
    assert code_extract(text) == evalplus_sanitize.code_extract(text)
    for entry in ("add", None, "Stack"):
        assert sanitize(text, entry) == evalplus_sanitize.sanitize(text, entry), (text, entry)


def test_random_outputs_sanitize_as_evalplus_does() -> None:
    mismatches = []
    for text in _random_outputs(400):
        for entry in ("add", "Stack"):
            ours, theirs = sanitize(text, entry), evalplus_sanitize.sanitize(text, entry)
            if ours != theirs:
                mismatches.append((text, entry, ours, theirs))
    assert not mismatches, f"{len(mismatches)} of 800 differ; first: {mismatches[0]}"
