"""Approvals of gated stages: granted on named evidence, lapsed when it changes.

The evidence of a stage is the identity of what it would consume (the content
hash of each input artifact, or a size/mtime fingerprint of a user path) and the
verdicts of its work item's acceptance criteria with the checkpoint hashes they
were computed on. An approval holds the evidence the approver saw; once any of it
changes (a new checkpoint hash, a new result), the approval no longer applies.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from engine.gates import evaluate_gates
from engine.refs import resolve_ref
from engine.spec import REF_RE, PipelineSpec
from engine.workspace import Workspace


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
    evidence: dict[str, Any] = {"inputs": {name: ref_fingerprint(spec, ws, ref) for name, ref in sorted(entry.inputs.items())}}
    acs = spec.work_items[entry.work_item].acceptance if entry.work_item else []
    if acs:
        verdicts = evaluate_gates(spec, ws)
        evidence["gates"] = {ac: {"outcome": verdicts[ac].outcome, "checkpoints": verdicts[ac].checkpoints,
                                  "records": verdicts[ac].evidence} for ac in acs}
    return evidence


def approval_current(spec: PipelineSpec, ws: Workspace, stage: str, approval: dict[str, Any] | None) -> bool:
    """True when an approval exists and the evidence it named is still the evidence now."""
    if spec.stages[stage].approval != "required":
        return True
    if approval is None:
        return False
    return approval.get("evidence") == stage_evidence(spec, ws, stage)
