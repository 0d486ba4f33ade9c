"""Resolve the spec's references (model:NAME, dataset:NAME, STAGE.ARTIFACT) to paths.

A spec path may start with ``pmat://`` to name a file shipped inside the engine
package (the demo's data). A stage parameter whose whole value is ``dataset:NAME``
is replaced by that dataset's path when a job is launched, so a path is typed once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.spec import PARAM_REF_RE, REF_RE, PipelineSpec
from engine.workspace import Workspace

PACKAGE_ROOT = Path(__file__).resolve().parent


def _path(base: Path, value: str) -> str:
    if value.startswith("pmat://"):
        return str(PACKAGE_ROOT / value[len("pmat://"):])
    return str((base / Path(value).expanduser()).resolve())


def resolve_ref(spec: PipelineSpec, ws: Workspace, ref: str, spec_dir: Path | None = None) -> str:
    """The filesystem path (or package name) an input reference points at."""
    m = REF_RE.match(ref)
    if m is None:
        raise ValueError(f"bad reference {ref!r}")
    base = spec_dir or ws.root
    if m.group(1) == "model":
        entry = spec.models[m.group(2)]
        if entry.artifact:
            return resolve_ref(spec, ws, entry.artifact, spec_dir)
        return _path(base, entry.path)
    if m.group(1) == "dataset":
        entry = spec.datasets[m.group(2)]
        if entry.path:
            return _path(base, entry.path)
        return f"package:{entry.package}"
    return str(ws.artifact_path(m.group(3), m.group(4)))


def resolve_params(spec: PipelineSpec, ws: Workspace, params: Any, spec_dir: Path | None = None) -> Any:
    """Stage parameters with every ``dataset:NAME`` value replaced by its path."""
    if isinstance(params, dict):
        return {k: resolve_params(spec, ws, v, spec_dir) for k, v in params.items()}
    if isinstance(params, list):
        return [resolve_params(spec, ws, v, spec_dir) for v in params]
    if isinstance(params, str) and PARAM_REF_RE.match(params):
        return resolve_ref(spec, ws, params, spec_dir)
    return params

