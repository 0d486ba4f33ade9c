"""Contracts: YAML statements of what must hold, each obligation bound to real tests.

Schema (contracts/*.yaml)::

    id: lora-algebra                 # unique, matches the file name
    title: LoRA merge algebra
    references: [peft docs ...]      # where the equations come from
    acceptance: [AC-006]             # criteria it supports (optional)
    equations:
      - {id: EQ-1, text: "W' = W + (B @ A) * alpha / r"}
    obligations:
      - id: LORA-001
        kind: equality               # equality | bound | invariant | safety | property
        statement: merged weights equal peft merge_and_unload
        tolerance: 1.0e-5            # optional, for equality/bound
        tests: [tests/test_merge.py::test_merge_equals_peft]

``check`` resolves every binding to a collected pytest node (a missing test is an
error); ``verify`` runs the bound tests and reports each obligation.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS_DIR = ROOT / "contracts"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Equation(_Strict):
    id: str
    text: str


class Obligation(_Strict):
    id: str = Field(pattern=r"^[A-Z][A-Z0-9]*-\d{3}$")
    kind: Literal["equality", "bound", "invariant", "safety", "property"]
    statement: str
    tolerance: float | None = None
    tests: list[str] = Field(default_factory=list)


class Contract(_Strict):
    id: str
    title: str
    version: int = 1
    references: list[str] = Field(min_length=1)
    acceptance: list[str] = Field(default_factory=list)
    equations: list[Equation] = Field(default_factory=list)
    obligations: list[Obligation] = Field(min_length=1)


class ContractError(ValueError):
    pass


def load_contracts(directory: Path = CONTRACTS_DIR) -> list[Contract]:
    out: list[Contract] = []
    seen: set[str] = set()
    for path in sorted(directory.glob("*.yaml")):
        try:
            c = Contract(**yaml.safe_load(path.read_text()))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ContractError(f"{path}: {loc}: {err['msg']}") from None
        except yaml.YAMLError as exc:
            raise ContractError(f"{path}: invalid YAML: {exc}") from None
        if c.id != path.stem:
            raise ContractError(f"{path}: id {c.id!r} does not match the file name")
        for ob in c.obligations:
            if ob.id in seen:
                raise ContractError(f"{path}: obligations: duplicate id {ob.id}")
            seen.add(ob.id)
        out.append(c)
    return out


def collected_nodes(files: set[str]) -> set[str]:
    """pytest node ids collected from the given test files."""
    if not files:
        return set()
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *sorted(files)],
                         cwd=ROOT, capture_output=True, text=True)
    nodes = set()
    for line in res.stdout.splitlines():
        if "::" in line:
            nodes.add(line.strip())
            nodes.add(re.sub(r"\[.*\]$", "", line.strip()))  # a parametrized test binds by its name
    return nodes


@dataclass
class BindingReport:
    contracts: int
    obligations: int
    bound: int
    missing: list[tuple[str, str]] = field(default_factory=list)  # (obligation id, node id)
    unbound: list[str] = field(default_factory=list)

    @property
    def coverage(self) -> float:
        return self.bound / self.obligations if self.obligations else 0.0


def check_bindings(contracts: list[Contract]) -> BindingReport:
    files = {t.split("::")[0] for c in contracts for ob in c.obligations for t in ob.tests}
    nodes = collected_nodes({f for f in files if (ROOT / f).exists()})
    rep = BindingReport(len(contracts), sum(len(c.obligations) for c in contracts), 0)
    for c in contracts:
        for ob in c.obligations:
            if not ob.tests:
                rep.unbound.append(ob.id)
                continue
            missing = [t for t in ob.tests if t not in nodes]
            rep.missing.extend((ob.id, t) for t in missing)
            if not missing:
                rep.bound += 1
    return rep


def verify(contracts: list[Contract]) -> dict[str, str]:
    """Run every bound test once; the verdict of each obligation (passed | failed | unbound)."""
    tests = sorted({t for c in contracts for ob in c.obligations for t in ob.tests})
    results: dict[str, str] = {}
    if tests:
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *tests],
                             cwd=ROOT, capture_output=True, text=True)
        for line in res.stdout.splitlines():
            m = re.match(r"^(PASSED|FAILED|ERROR|SKIPPED) (\S+)", line)
            if m:
                node, outcome = m.group(2), m.group(1).lower()
                for key in {node, re.sub(r"\[.*\]$", "", node)}:  # a parametrized test fails if any case fails
                    if results.get(key) in (None, "passed"):
                        results[key] = outcome
    verdicts = {}
    for c in contracts:
        for ob in c.obligations:
            if not ob.tests:
                verdicts[ob.id] = "unbound"
                continue
            outcomes = [results.get(t, "missing") for t in ob.tests]
            verdicts[ob.id] = "passed" if all(o == "passed" for o in outcomes) else "failed"
    return verdicts
