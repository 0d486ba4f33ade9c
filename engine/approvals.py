"""Approvals of gated stages: granted on named evidence, lapsed when it changes.

The evidence of a stage is the identity of what it would consume: the content
hash of each input artifact (from its manifest) or a size/mtime fingerprint of a
user path. An approval holds the evidence the approver saw; once any input is
republished (a new checkpoint hash), the approval no longer applies.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

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


def ref_fingerprint(spec: PipelineSpec, ws: Workspace, ref: str) -> str | None:
    """Content hash of a stage artifact, or a cheap fingerprint of a user path."""
    m = REF_RE.match(ref)
    if m is None:
        return None
    if m.group(1) == "model" and spec.models[m.group(2)].artifact:
        return ref_fingerprint(spec, ws, spec.models[m.group(2)].artifact)
    if m.group(3):
        manifest = ws.manifest(m.group(3), m.group(4))
        return manifest["sha256"] if manifest else None
    path = Path(resolve_ref(spec, ws, ref))
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path.parent)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return "fp:" + h.hexdigest()


def stage_evidence(spec: PipelineSpec, ws: Workspace, stage: str) -> dict[str, Any]:
    """What an approver of ``stage`` is shown and signs: its inputs' hashes."""
    entry = spec.stages[stage]
    return {"inputs": {name: ref_fingerprint(spec, ws, ref) for name, ref in sorted(entry.inputs.items())}}


def approval_current(spec: PipelineSpec, ws: Workspace, stage: str, approval: dict[str, Any] | None) -> bool:
    """True when an approval exists and the evidence it named is still the evidence now."""
    if approval is None:
        return False
    return approval.get("evidence") == stage_evidence(spec, ws, stage)
