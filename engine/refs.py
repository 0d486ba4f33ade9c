"""Resolve the spec's references (model:NAME, dataset:NAME, STAGE.ARTIFACT) to paths."""

from __future__ import annotations

from pathlib import Path

from engine.spec import REF_RE, PipelineSpec
from engine.workspace import Workspace


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
        return str((base / Path(entry.path).expanduser()).resolve())
    if m.group(1) == "dataset":
        entry = spec.datasets[m.group(2)]
        if entry.path:
            return str((base / Path(entry.path).expanduser()).resolve())
        return f"package:{entry.package}"
    return str(ws.artifact_path(m.group(3), m.group(4)))
