"""The import floors of docs/ARCHITECTURE.md hold: `lint-imports` checks .importlinter (no import
runs up a floor, no kind imports another kind, no circle between siblings), every module of
engine/ has a floor, and the floors the document draws are the contract's."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _contract_floors() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".importlinter")
    return [line.strip() for line in cfg["importlinter:contract:floors"]["layers"].splitlines() if line.strip()]


def test_lint_imports_keeps_every_contract() -> None:
    tool = Path(sys.executable).parent / "lint-imports"
    assert tool.exists(), f"{tool}: missing; install the dev extra (pip install -e '.[dev]')"
    res = subprocess.run([str(tool), "--no-cache", "--config", str(ROOT / ".importlinter")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout, res.stdout[-3000:]


def test_every_engine_module_has_a_floor() -> None:
    named = {m.strip() for floor in _contract_floors() for m in re.split(r"[|:]", floor)}
    modules = {f"engine.{p.stem}" for p in (ROOT / "engine").glob("*.py") if p.stem != "__init__"}
    modules |= {f"engine.{p.parent.name}" for p in (ROOT / "engine").glob("*/__init__.py")}
    missing = sorted(modules - named)
    assert not missing, f".importlinter: no floor for {missing}; give each one in docs/ARCHITECTURE.md"


def test_architecture_document_draws_the_contracts_floors() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = re.search(r"<!-- floors: equal to \.importlinter -->\s*```text\n(.*?)```", text, re.S)
    assert block, "docs/ARCHITECTURE.md: no floors block"
    drawn = [re.sub(r"^\s*\d+\s+", "", line).split("  #")[0].strip()
             for line in block.group(1).splitlines() if line.strip()]
    assert drawn == _contract_floors()


def test_no_top_level_package_shadows_an_installed_distribution() -> None:
    """pmat's top-level packages must not share a name with another distribution's: a package of
    ours named `kernels` shadowed Hugging Face's `kernels`, which transformers 5.25 imports."""
    import tomllib
    from importlib.metadata import packages_distributions

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    ours = {p.rstrip("*") for p in include}
    assert all((ROOT / p / "__init__.py").exists() for p in ours), ours
    clash = {p: d for p, d in packages_distributions().items() if p in ours and set(d) - {"pmat"}}
    assert not clash, f"top-level packages shadowing installed distributions: {clash}"
