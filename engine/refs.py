"""Resolve the spec's references (model:NAME, dataset:NAME, STAGE.ARTIFACT) to paths.

A spec path may start with ``pmat://`` to name a file shipped inside the engine
package (the demo's data). A stage parameter whose whole value is ``dataset:NAME``
is replaced by that dataset's path when a job is launched, so a path is typed once;
``dataset:NAME.sha256`` by the sha256 the spec pins for it (null: the project's pin applies).
A dataset named by ``id`` is the file ``pmat data fetch ID`` recorded in the workspace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.data.fetch import dest_path, user_pin
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
        if entry.id:
            return str(dest_path(ws.root, entry.id))
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
    if isinstance(params, str) and (m := PARAM_REF_RE.match(params)):
        if m.group(2):  # dataset:NAME.sha256: the hash the spec pins (None: the project's pin applies)
            entry = spec.datasets[m.group(1)]
            return entry.sha256 or (user_pin(ws.root, entry.id) if entry.id else None)
        return resolve_ref(spec, ws, f"dataset:{m.group(1)}", spec_dir)
    return params

