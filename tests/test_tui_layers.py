"""The console and the kernels import without circles, even for type hints (the views once
imported the app that imports them; the quantizer's torch and Triton paths each other). The
floors between packages are .importlinter's."""

from __future__ import annotations

import grimp
import pytest


def _cycle(graph: grimp.ImportGraph, package: str) -> list[str] | None:
    """One import circle among ``package``'s modules (depth-first), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done:
            return None
        for dep in sorted(graph.find_modules_directly_imported_by(module)):
            if dep.split(".")[0] == package and (found := visit(dep, [*path, module])):
                return found
        done.add(module)
        return None

    return next((c for m in sorted(graph.modules) if (c := visit(m, []))), None)


@pytest.mark.parametrize("package", ["pmat_tui", "pmat_kernels"])
def test_no_import_circles(package: str) -> None:
    graph = grimp.build_graph(package, cache_dir=None)  # TYPE_CHECKING imports count too
    assert _cycle(graph, package) is None

