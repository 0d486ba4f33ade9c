"""Framing and value encoding between the untrusted child and the trusted test runner.

Only plain data crosses, and it is materialised: the decoder builds real values of the
types the program returned, out of builtin and standard-library classes only (a range
stays a range, a ``keys()`` view is a real keys view, a ``deque``, ``Counter`` or
namedtuple is one, a generator becomes a generator over the items it yielded, numpy
arrays and scalars keep their dtype), so truthiness, equality and ``type()`` behave as
they would in-process. An object of the program's own making arrives as an opaque
handle (equal only to itself, with no truth value); a subclass of a builtin travels as
its base type, so no method of the program's ever runs on the trusted side. Decoding is
budgeted (bytes, containers, items, depth) before and while it builds anything.
"""

from __future__ import annotations

import array
import base64
import datetime as dt
import json
import math
import os
import re
import socket
import struct
import sys
from collections import ChainMap, Counter, OrderedDict, defaultdict, deque, namedtuple
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

MAX_MESSAGE = 16 << 20  # bytes; a larger reply is a protocol error, not a hang
MAX_DEPTH = 200
MAX_ITEMS = 1_000_000  # values in one reply (decoded or encoded)
MAX_CONTAINERS = 1_000_000  # JSON objects and arrays in one message (each value is 2): ~130 bytes each to decode
MAX_TYPES = 256  # distinct namedtuple classes built per connection
HEADER = struct.Struct("!I")
# built once: json.dumps with any option builds a new encoder on every call
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_LINES = json.JSONEncoder(separators=(",", ":"), default=str)


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
    """A message body; anything that is not well-formed JSON is a protocol error. The
    number of containers is counted on the raw bytes first (an upper bound: brackets in
    strings count too), so a small frame cannot make the decoder build a huge tree."""
    if data.count(b"{") + data.count(b"[") > MAX_CONTAINERS:
        raise ProtocolError(f"message has more than {MAX_CONTAINERS} containers")
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
_KEYS, _VALUES, _ITEMS = type({}.keys()), type({}.values()), type({}.items())
_BUILTIN_FACTORIES = {t.__name__: t for t in (int, float, str, list, dict, set, frozenset, tuple, bool)}
_NP_KINDS = "biufcmM"  # numpy dtypes that travel as raw bytes: bool, ints, floats, complex, datetimes
_NP_ITEMS = "USO"  # numpy dtypes that travel item by item: str, bytes, objects
_MAX_NP_BYTES = 4 * MAX_MESSAGE  # an itemwise array the decoder builds (a declared itemsize could inflate it)
_PATTERN = type(re.compile(""))


def _replay(items: list[Any]) -> Any:
    """A generator over what the program's lazy iterable yielded: truthy, equal only to itself,
    single-pass, exactly as a generator, map or zip is in-process."""
    yield from items


def _numpy_tag(value: Any, np: Any, rec: Callable[[Any], Any]) -> dict[str, Any] | None:
    """Numeric and datetime arrays as raw bytes; str, bytes and object arrays item by item
    (each item encoded as any value); structured arrays are not plain data (None: a handle)."""
    plain = value.dtype.fields is None and value.dtype.subdtype is None
    if isinstance(value, np.ndarray) and plain:
        arr = np.ascontiguousarray(value)
        if arr.dtype.kind in _NP_KINDS:
            return {"np": arr.dtype.str, "shape": list(arr.shape), "data": base64.b64encode(arr.tobytes()).decode()}
        if arr.dtype.kind in _NP_ITEMS:
            items = arr.ravel().tolist() if arr.dtype.kind != "O" else list(arr.ravel())
            return {"npl": [rec(v) for v in items], "dtype": arr.dtype.str, "shape": list(arr.shape)}
    if isinstance(value, np.generic) and plain and value.dtype.kind in _NP_KINDS:
        return {"nps": value.dtype.str, "data": base64.b64encode(value.tobytes()).decode()}
    return None


def _tz(tz: Any, rec: Callable[[Any], Any]) -> Any:
    """A fixed-offset ``datetime.timezone`` (or None); any other tzinfo is not plain data."""
    if tz is None:
        return None
    if type(tz) is not dt.timezone:
        raise TypeError
    off = tz.utcoffset(None)
    name = tz.tzname(None)  # a name given explicitly travels; the default one is rebuilt
    return {"off": rec(off), "name": None if name == dt.timezone(off).tzname(None) else name}


def _stdlib_value(value: Any, rec: Callable[[Any], Any]) -> dict[str, Any] | None:
    """Standard-library value types that tests compare (exact classes: a program's subclass
    is its own object), or None."""
    cls = type(value)
    if cls is Decimal:
        return {"dec": str(value)}
    if cls is Fraction:
        return {"frac": [rec(value.numerator), rec(value.denominator)]}
    if cls is dt.timedelta:
        return {"td": [value.days, value.seconds, value.microseconds]}
    if cls is dt.date:
        return {"date": [value.year, value.month, value.day]}
    try:
        if cls is dt.datetime:
            return {"dt": [value.year, value.month, value.day, value.hour, value.minute, value.second,
                           value.microsecond, value.fold], "tz": _tz(value.tzinfo, rec)}
        if cls is dt.time:
            return {"tm": [value.hour, value.minute, value.second, value.microsecond, value.fold],
                    "tz": _tz(value.tzinfo, rec)}
        if cls is dt.timezone:
            return {"tzv": _tz(value, rec)}
    except TypeError:
        return None  # a zoneinfo or the program's own tzinfo: a handle
    if cls is array.array:
        return {"arr": value.typecode, "data": base64.b64encode(value.tobytes()).decode()}
    if cls is ChainMap:
        return {"cm": [rec(m) for m in value.maps]}
    if cls is _PATTERN:
        return {"re": rec(value.pattern), "flags": value.flags}
    if cls is slice:
        return {"sl": [rec(value.start), rec(value.stop), rec(value.step)]}
    return None


def encode(value: Any, make_ref: Callable[[Any], Any], depth: int = 0, budget: list[int] | None = None) -> Any:
    """Encode a value as tagged JSON, by what it is (never by the program's methods); objects
    that are not plain data become handles: ``make_ref`` returns an int handle, or the whole
    encoding as a dict (the runner's way of passing a handle back)."""
    budget = budget if budget is not None else [MAX_ITEMS]
    budget[0] -= 1
    if depth > MAX_DEPTH or budget[0] < 0:
        raise ValueError("value too deep or too large to return")
    if value is None or isinstance(value, (bool, str)):
        return str.__str__(value) if isinstance(value, str) else value
    rec = lambda v: encode(v, make_ref, depth + 1, budget)  # noqa: E731
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, (np.ndarray, np.generic)):
        tagged = _numpy_tag(value, np, rec)
        if tagged is not None:
            return tagged
    if isinstance(value, int):
        v = int.__index__(value)
        return v if -(10**300) < v < 10**300 else {"x": hex(v)}
    if isinstance(value, float):
        return float.__float__(value)
    cls = type(value)
    if isinstance(value, tuple) and cls.__bases__ == (tuple,) and isinstance(cls.__dict__.get("_fields"), tuple):
        return {"nt": [rec(v) for v in tuple.__iter__(value)], "name": cls.__name__,
                "fields": [str(f) for f in cls.__dict__["_fields"]]}
    if cls is deque:
        return {"dq": [rec(v) for v in deque.__iter__(value)], "max": value.maxlen}
    for kind, tag in ((Counter, "ctr"), (OrderedDict, "od"), (defaultdict, "dd")):
        if cls is kind:
            out = {tag: [[rec(k), rec(v)] for k, v in dict.items(value)]}
            if kind is defaultdict:
                factory = value.default_factory
                out["fac"] = factory.__name__ if factory in _BUILTIN_FACTORIES.values() else None
            return out
    for base, tag in ((list, "l"), (tuple, "t"), (set, "s"), (frozenset, "f")):
        if isinstance(value, base):
            return {tag: [rec(v) for v in base.__iter__(value)]}
    if isinstance(value, dict):
        return {"d": [[rec(k), rec(v)] for k, v in dict.items(value)]}
    if cls is bytearray:
        return {"ba": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (bytes, bytearray)):
        return {"b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, complex):
        return {"c": [complex.__complex__(value).real, complex.__complex__(value).imag]}
    if cls is range:
        return {"rg": [rec(value.start), rec(value.stop), rec(value.step)]}
    if isinstance(value, _ITEMS):
        return {"di": [[rec(k), rec(v)] for k, v in value]}
    for view, tag in ((_KEYS, "dk"), (_VALUES, "dv")):
        if isinstance(value, view):
            return {tag: [rec(v) for v in value]}
    if cls.__module__ in ("builtins", "itertools") and hasattr(cls, "__next__"):
        return {"it": [rec(v) for v in value]}  # generators, map, zip, iterators: run out here
    tagged = _stdlib_value(value, rec)
    if tagged is not None:
        return tagged
    ref = make_ref(value)
    return ref if isinstance(ref, dict) else {"ref": ref, "type": cls.__qualname__[:100], "truthy": _always_true(cls)}


def _always_true(cls: type) -> bool:
    """An object whose class defines neither ``__bool__`` nor ``__len__`` is true in-process
    whatever it is (a ``re.Match``, an enum member, a plain instance): its handle may say so.
    A child that lies gains nothing it could not get by returning True."""
    return not any("__bool__" in vars(k) or "__len__" in vars(k) for k in cls.__mro__)


_STDLIB_TAGS = frozenset({"td", "date", "dt", "tm", "tzv", "arr", "cm", "re", "sl"})


class _Decoder:
    """Builds values from tagged JSON under one item budget; namedtuple classes cached."""

    def __init__(self, make_ref: Callable[[int, str, bool], Any], extra: Callable[[dict], Any] | None,
                 types: dict[tuple, type] | None) -> None:
        self.make_ref, self.extra = make_ref, extra
        self.types = types if types is not None else {}
        self.left = MAX_ITEMS

    def pairs(self, val: Any, depth: int) -> list[tuple[Any, Any]]:
        return [(self.value(k, depth), self.value(v, depth)) for k, v in val]

    def namedtuple(self, name: Any, fields: Any) -> type:
        key = (str(name), tuple(str(f) for f in fields))
        if key not in self.types:
            if len(self.types) >= MAX_TYPES or len(key[1]) > 64 or len(key[0]) > 100:
                raise ProtocolError("too many or too large namedtuple types")
            self.types[key] = namedtuple(key[0], key[1])  # validates the names: identifiers only
        return self.types[key]

    def numpy(self, obj: dict[str, Any]) -> Any:
        import numpy as np

        dtype = np.dtype(str(obj.get("np") or obj.get("nps") or obj.get("dtype"))[:16])
        if "npl" in obj:
            items = [self.value(v, 1) for v in obj["npl"]]
            shape = tuple(int(n) for n in obj["shape"])
            if (dtype.kind not in _NP_ITEMS or len(shape) > 32 or math.prod(shape) != len(items)
                    or len(items) * dtype.itemsize > _MAX_NP_BYTES):
                raise ProtocolError(f"numpy array of dtype {dtype} and shape {shape} not accepted")
            if dtype.kind != "O":
                if not all(type(v) is (str if dtype.kind == "U" else bytes) for v in items):
                    raise ProtocolError(f"numpy array of dtype {dtype} with items of another type")
                return np.array(items, dtype=dtype).reshape(shape)
            out = np.empty(len(items), dtype=object)
            for i, v in enumerate(items):
                out[i] = v
            return out.reshape(shape)
        if dtype.kind not in _NP_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise ProtocolError(f"numpy dtype {dtype} not accepted")
        data = base64.b64decode(str(obj["data"]))
        if "nps" in obj:
            if len(data) != dtype.itemsize:
                raise ProtocolError("numpy scalar of the wrong size")
            return np.frombuffer(data, dtype=dtype)[0]
        shape = tuple(int(n) for n in obj["shape"])
        if len(shape) > 32 or any(n < 0 for n in shape) or math.prod(shape) * dtype.itemsize != len(data):
            raise ProtocolError("numpy array whose shape does not match its data")
        self.spend(len(data) // max(1, dtype.itemsize))
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()

    def tz(self, enc: Any, depth: int) -> dt.timezone | None:
        if enc is None:
            return None
        off = self.value(enc["off"], depth)
        return dt.timezone(off) if enc.get("name") is None else dt.timezone(off, str(enc["name"])[:100])

    def stdlib(self, tag: str, obj: dict[str, Any], depth: int) -> Any:
        """The standard-library value types of ``_stdlib_value``; their constructors validate."""
        ints = lambda key: [int(v) for v in obj[key]]  # noqa: E731 - JSON ints only, no tags
        if tag == "td":
            return dt.timedelta(*ints("td"))
        if tag == "date":
            return dt.date(*ints("date"))
        if tag == "dt":
            *fields, fold = ints("dt")
            return dt.datetime(*fields, tzinfo=self.tz(obj.get("tz"), depth), fold=fold)
        if tag == "tm":
            *fields, fold = ints("tm")
            return dt.time(*fields, tzinfo=self.tz(obj.get("tz"), depth), fold=fold)
        if tag == "tzv":
            return self.tz(obj["tzv"], depth)
        if tag == "arr":
            code, data = str(obj["arr"]), base64.b64decode(str(obj["data"]))
            if len(code) != 1 or code not in array.typecodes:
                raise ProtocolError(f"array typecode {code[:8]!r} not accepted")
            out = array.array(code)
            out.frombytes(data)  # a length that is not a multiple of the item size raises ValueError
            self.spend(len(out))
            return out
        if tag == "cm":
            return ChainMap(*(self.value(m, depth) for m in obj["cm"]))
        if tag == "re":
            pattern = self.value(obj["re"], depth)
            if type(pattern) not in (str, bytes):
                raise ProtocolError("regular expression pattern that is not str or bytes")
            return re.compile(pattern, int(obj["flags"]))
        return slice(*(self.value(v, depth) for v in obj["sl"]))

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise ProtocolError(f"value with more than {MAX_ITEMS} items")

    def value(self, obj: Any, depth: int = 0) -> Any:
        self.spend(1)
        if depth > MAX_DEPTH:
            raise ProtocolError("value nested too deep")
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if not isinstance(obj, dict) or not obj:
            raise ProtocolError(f"malformed value of type {type(obj).__name__}")
        d = depth + 1
        rec = lambda v: self.value(v, d)  # noqa: E731
        tag = next(iter(obj))
        try:
            if tag == "l":
                return [rec(v) for v in obj["l"]]
            if tag == "t":
                return tuple(rec(v) for v in obj["t"])
            if tag == "s":
                return {rec(v) for v in obj["s"]}
            if tag == "f":
                return frozenset(rec(v) for v in obj["f"])
            if tag == "d":
                return dict(self.pairs(obj["d"], d))
            if tag == "nt":
                return self.namedtuple(obj["name"], obj["fields"])(*(rec(v) for v in obj["nt"]))
            if tag == "dq":
                maxlen = obj.get("max")
                return deque((rec(v) for v in obj["dq"]), None if maxlen is None else int(maxlen))
            if tag == "ctr":
                return Counter(dict(self.pairs(obj["ctr"], d)))
            if tag == "od":
                return OrderedDict(self.pairs(obj["od"], d))
            if tag == "dd":
                return defaultdict(_BUILTIN_FACTORIES.get(str(obj.get("fac"))), self.pairs(obj["dd"], d))
            if tag == "rg":
                return range(*(int(rec(v)) for v in obj["rg"]))
            if tag == "dk":
                return dict.fromkeys(rec(v) for v in obj["dk"]).keys()
            if tag == "dv":
                return dict(enumerate(rec(v) for v in obj["dv"])).values()
            if tag == "di":
                return dict(self.pairs(obj["di"], d)).items()
            if tag == "it":
                return _replay([rec(v) for v in obj["it"]])
            if tag == "x":
                return int(obj["x"], 16)
            if tag in ("b", "ba"):
                data = base64.b64decode(obj[tag])
                return bytearray(data) if tag == "ba" else data
            if tag == "c":
                return complex(float(obj["c"][0]), float(obj["c"][1]))
            if tag == "dec":
                return Decimal(str(obj["dec"]))
            if tag == "frac":
                return Fraction(int(rec(obj["frac"][0])), int(rec(obj["frac"][1])))
            if tag in ("np", "nps", "npl"):
                return self.numpy(obj)
            if tag in _STDLIB_TAGS:
                return self.stdlib(tag, obj, d)
            if tag == "ref":
                return self.make_ref(int(obj["ref"]), str(obj.get("type", "?"))[:100], obj.get("truthy") is True)
            if self.extra is not None:
                return self.extra(obj)
        except ProtocolError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, ArithmeticError, AttributeError, re.error) as exc:
            raise ProtocolError(f"malformed value: {type(exc).__name__}: {str(exc)[:200]}") from None
        raise ProtocolError(f"unknown value tag {str(tag)[:40]!r}")


def decode(obj: Any, make_ref: Callable[[int, str, bool], Any], *, extra: Callable[[dict], Any] | None = None,
           types: dict[tuple, type] | None = None) -> Any:
    """Inverse of ``encode``, building only builtin and standard-library values, within
    ``MAX_ITEMS`` and ``MAX_DEPTH``; ``extra`` decodes tags only one side knows."""
    return _Decoder(make_ref, extra, types).value(obj)
