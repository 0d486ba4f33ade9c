"""Framing and value encoding between the untrusted child and the trusted test runner.

Only plain data crosses: the decoder builds nothing but builtin values (and opaque
``Ref`` handles), so an object that compares equal to anything, or any other object of
the program's own making, never reaches the trusted side's asserts. Subclasses of
builtins travel as their base type (a ``Counter`` arrives as a ``dict``).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import types
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

MAX_MESSAGE = 64 << 20  # bytes; a larger reply is a protocol error, not a hang
MAX_DEPTH = 200
MAX_ITEMS = 1_000_000
HEADER = struct.Struct("!I")
# built once: json.dumps with any option builds a new encoder on every call
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_LINES = json.JSONEncoder(separators=(",", ":"), default=str)


_SETLIKE = (type({}.keys()), type({}.items()))
_ITERATED = (*_SETLIKE, type({}.values()), range, types.GeneratorType, map, filter, zip, reversed, enumerate)


class Iterated:
    """A lazy iterable (generator, map, range, dict view...) materialized in the child.

    It iterates like the original; it equals only itself, except the set-like dict views
    (``keys()``, ``items()``), which compare as sets, as they do in Python.
    """

    __slots__ = ("items", "setlike")

    def __init__(self, items: list[Any], setlike: bool) -> None:
        self.items, self.setlike = items, setlike

    def __iter__(self):  # noqa: ANN204 - an iterator of the items
        return iter(self.items)

    def __eq__(self, other: object) -> bool:
        if self.setlike and isinstance(other, (set, frozenset, Iterated)):
            return set(self) == set(other)
        return self is other

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<iterated {self.items!r}>"


class ProtocolError(Exception):
    """The other side sent something that is not a well-formed message."""


def pack_msg(obj: Any) -> bytes:
    """One framed message: a 4-byte length, then compact JSON."""
    data = _COMPACT.encode(obj).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return HEADER.pack(len(data)) + data


def send_msg(sock: socket.socket, obj: Any) -> None:
    sock.sendall(pack_msg(obj))


def loads(data: bytes) -> Any:
    """A message body; anything that is not well-formed JSON is a protocol error."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed message: {exc}") from None


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("peer closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_msg(sock: socket.socket) -> Any:
    (size,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if size > MAX_MESSAGE:
        raise ProtocolError(f"message of {size} bytes exceeds {MAX_MESSAGE}")
    return loads(_recv_exact(sock, size))


def write_line(fd: int, obj: Any) -> None:
    """Write one JSON line to a raw fd in full (pipes between template and manager)."""
    data = (_LINES.encode(obj) + "\n").encode()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- values -------------------------------------------------------------------
def encode(value: Any, make_ref: Callable[[Any], int], depth: int = 0, budget: list[int] | None = None) -> Any:
    """Encode a value as tagged JSON; objects that are not plain data become handles."""
    budget = budget if budget is not None else [MAX_ITEMS]
    budget[0] -= 1
    if depth > MAX_DEPTH or budget[0] < 0:
        raise ValueError("value too deep or too large to return")
    if value is None or isinstance(value, (bool, str)):
        return str.__str__(value) if isinstance(value, str) else value
    if isinstance(value, int):
        v = int.__index__(value)
        return v if -(10**300) < v < 10**300 else {"x": hex(v)}
    if isinstance(value, float):
        return float.__float__(value)
    rec = lambda v: encode(v, make_ref, depth + 1, budget)  # noqa: E731
    for base, tag in ((list, "l"), (tuple, "t"), (set, "s"), (frozenset, "f")):
        if isinstance(value, base):
            return {tag: [rec(v) for v in base.__iter__(value)]}
    if isinstance(value, dict):
        return {"d": [[rec(k), rec(v)] for k, v in dict.items(value)]}
    if isinstance(value, (bytes, bytearray)):
        return {"b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, complex):
        return {"c": [complex.__complex__(value).real, complex.__complex__(value).imag]}
    if type(value) in _ITERATED or type(value).__module__ == "itertools":
        return {"it": [rec(v) for v in value], "set": type(value) in _SETLIKE}
    if type(value) is Decimal:
        return {"dec": str(value)}
    if type(value) is Fraction:
        return {"frac": [value.numerator, value.denominator]}
    return {"ref": make_ref(value), "type": type(value).__qualname__[:100]}


def decode(obj: Any, make_ref: Callable[[int, str], Any], depth: int = 0) -> Any:
    """Inverse of ``encode`` building only builtin values (trusted side)."""
    if depth > MAX_DEPTH:
        raise ProtocolError("value nested too deep")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict) and len(obj) in (1, 2):
        rec = lambda v: decode(v, make_ref, depth + 1)  # noqa: E731
        try:
            if "l" in obj:
                return [rec(v) for v in obj["l"]]
            if "t" in obj:
                return tuple(rec(v) for v in obj["t"])
            if "s" in obj:
                return {rec(v) for v in obj["s"]}
            if "f" in obj:
                return frozenset(rec(v) for v in obj["f"])
            if "d" in obj:
                return {rec(k): rec(v) for k, v in obj["d"]}
            if "x" in obj:
                return int(obj["x"], 16)
            if "b" in obj:
                return base64.b64decode(obj["b"])
            if "c" in obj:
                return complex(float(obj["c"][0]), float(obj["c"][1]))
            if "dec" in obj:
                return Decimal(str(obj["dec"]))
            if "frac" in obj:
                return Fraction(int(obj["frac"][0]), int(obj["frac"][1]))
            if "it" in obj:
                return Iterated([rec(v) for v in obj["it"]], bool(obj.get("set")))
            if "ref" in obj:
                return make_ref(int(obj["ref"]), str(obj.get("type", "?")))
        except (TypeError, ValueError, KeyError, IndexError, ArithmeticError) as exc:
            raise ProtocolError(f"malformed value: {exc}") from None
    raise ProtocolError(f"malformed value of type {type(obj).__name__}")
