"""Write measured declarations (memory_gb, duration_h) into a pipeline spec's text.

The spec is the one source of each stage's declarations, and it is a file people read: its
comments, anchors and inline mappings must survive. So this edits the text, stage by stage,
and never re-serialises the YAML: in a stage's block it replaces the two keys' values (or adds
the keys at the end of the block), in an inline ``{...}`` stage it replaces or appends them.
The result is parsed again and each stage must read back exactly the derived values.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

KEYS = ("memory_gb", "duration_h")


class DeclarationError(ValueError):
    """The spec text could not take the declarations (a stage missing, or read back wrong)."""


def _fmt(value: float) -> str:
    return f"{value:g}"


def _inline(line: str, values: dict[str, float]) -> str:
    body = line.rstrip()
    for key in KEYS:
        pat = re.compile(rf"(\b{key}:\s*)[^,}}]+")
        if pat.search(body):
            body = pat.sub(lambda m, k=key: m.group(1) + _fmt(values[k]), body, count=1)
        else:
            body = body[:-1].rstrip() + f", {key}: {_fmt(values[key])}}}"
    return body + "\n"


def _block(lines: list[str], start: int, indent: int, values: dict[str, float]) -> list[str]:
    """The stage's block (header at ``start``) with the keys set; keys missing go at its end."""
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" " * (indent + 1))):
        end += 1
    while end - 1 > start and not lines[end - 1].strip():
        end -= 1
    body = lines[start + 1:end]
    child = min((len(s) - len(s.lstrip()) for s in body if s.strip() and not s.lstrip().startswith("#")),
                default=indent + 2)
    for key in KEYS:
        pat = re.compile(rf"^( {{{child}}}{key}:\s*)([^#\n]*?)(\s*(#.*)?)$")
        for i, line in enumerate(body):
            if m := pat.match(line.rstrip("\n")):
                body[i] = m.group(1) + _fmt(values[key]) + (m.group(3) or "") + "\n"
                break
        else:
            body.append(" " * child + f"{key}: {_fmt(values[key])}\n")
    return [*lines[:start + 1], *body, *lines[end:]]


def apply(text: str, derived: dict[str, dict[str, float]]) -> str:
    """``text`` (a pipeline spec) with each stage of ``derived`` declared as measured."""
    lines = text.splitlines(keepends=True)
    try:
        top = next(i for i, s in enumerate(lines) if s.rstrip() == "stages:")
    except StopIteration:
        raise DeclarationError("the spec has no top-level 'stages:' block") from None
    for name, values in derived.items():
        pat = re.compile(rf"^(\s+){re.escape(name)}:(.*)$")
        at = next((i for i in range(top + 1, len(lines)) if (m := pat.match(lines[i].rstrip("\n")))
                   and len(m.group(1)) == 2), None)
        if at is None:
            raise DeclarationError(f"stage {name!r}: not in the spec's stages")
        rest = lines[at].split(":", 1)[1].strip()
        if rest.startswith("{"):
            if not rest.endswith("}"):
                raise DeclarationError(f"stage {name!r}: an inline mapping over several lines is not supported")
            lines[at] = _inline(lines[at], values)
        else:
            lines = _block(lines, at, 2, values)
    out = "".join(lines)
    stages: dict[str, Any] = (yaml.safe_load(out) or {}).get("stages") or {}
    for name, values in derived.items():
        got = {k: stages.get(name, {}).get(k) for k in KEYS}
        if any(got[k] is None or abs(float(got[k]) - values[k]) > 1e-9 for k in KEYS):
            raise DeclarationError(f"stage {name!r}: reads back {got}, not {values}")
    return out
