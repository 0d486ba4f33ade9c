"""Approvals of gated stages: granted on named evidence, lapsed when it changes.

The evidence of a stage is the identity of what it would consume (the verified content
hash of each input) and the verdicts of its work item's acceptance criteria with the
checkpoint hashes and ledger records they were computed on, and the criteria themselves
(expression, protocol pins): a gate redefined after the approval lapses it. An approval holds the
evidence the approver saw; once any of it changes (a new checkpoint hash, a new
result, bytes replaced in place), the approval no longer applies and the stages it
released are revoked: their artifacts are not offered for upload.

A criterion that does not pass (fail, no data, stale) cannot be approved without an
explicit override with a reason; the override is journaled with the approval and shown
wherever the approval is.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

from engine.chain import seal, sealed
from engine.content_id import CorruptArtifact, HashCache, ref_hash
from engine.gates import GateResult, evaluate_gates
from engine.spec import PipelineSpec
from engine.workspace import Workspace


def round_verdicts(spec: PipelineSpec, ws: Workspace) -> Verdicts:
    """The gates' verdicts for one round of looking at many stages: evaluated on first use only
    (a round with no standing approval evaluates nothing), then shared."""
    return functools.cache(lambda: evaluate_gates(spec, ws))


def gated_criteria(spec: PipelineSpec, stage: str) -> list[str]:
    """The acceptance criteria an approval of ``stage`` answers for (its work item's)."""
    entry = spec.stages[stage]
    return list(spec.work_items[entry.work_item].acceptance) if entry.work_item else []


Verdicts = Callable[[], Mapping[str, GateResult]]  # the gates' verdicts now, evaluated once per round


def stage_evidence(spec: PipelineSpec, ws: Workspace, stage: str, *, full: bool = False,
                   persist: bool = False, verdicts: Verdicts | None = None) -> dict[str, Any]:
    """What an approver of ``stage`` is shown and signs: its inputs' hashes and its gates.

    ``full`` re-hashes every byte (an approval being granted); otherwise unchanged
    files are taken from the hash cache. A corrupt input shows as ``corrupt: why``.
    ``verdicts`` (a plain, cached evaluation) spares a caller that looks at many stages in one
    round (the overview, the supervisor's tick) evaluating every gate again for each.
    """
    entry = spec.stages[stage]
    cache = HashCache(ws, persist=persist, full=full)
    inputs: dict[str, str | None] = {}
    for name, ref in sorted(entry.inputs.items()):
        try:
            inputs[name] = ref_hash(spec, ws, ref, cache)
        except CorruptArtifact as exc:
            inputs[name] = f"corrupt: {exc}"
    cache.save()
    evidence: dict[str, Any] = {"inputs": inputs}
    acs = gated_criteria(spec, stage)
    if acs:
        now = verdicts() if verdicts and not (full or persist) else evaluate_gates(
            spec, ws, full_hash=full, persist_cache=persist)
        evidence["gates"] = {ac: {"outcome": now[ac].outcome, "checkpoints": now[ac].checkpoints,
                                  "records": now[ac].evidence, "expr": spec.acceptance[ac].expr,
                                  "protocol": spec.acceptance[ac].protocol} for ac in acs if ac in now}
    return evidence


def check_approvable(spec: PipelineSpec, ws: Workspace, stage: str,
                     override: str | None = None) -> tuple[dict[str, Any], str | None]:
    """(evidence re-hashed in full, None) when ``stage`` may be approved now, else (evidence, why not).

    A corrupt input is never approvable; a gate that is not PASS needs ``override``, a
    non-empty reason, which the approval then carries.
    """
    if spec.stages[stage].approval != "required":
        return {}, f"stage {stage} needs no approval"
    evidence = stage_evidence(spec, ws, stage, full=True, persist=True)
    corrupt = [v for v in evidence["inputs"].values() if isinstance(v, str) and v.startswith("corrupt: ")]
    if corrupt:
        return evidence, f"cannot approve {stage}: {corrupt[0].removeprefix('corrupt: ')}"
    failing = {ac: g["outcome"] for ac, g in evidence.get("gates", {}).items() if g["outcome"] != "pass"}
    if failing and not (override or "").strip():
        shown = ", ".join(f"{ac} is {o.upper().replace('_', ' ')}" for ac, o in failing.items())
        return evidence, f"cannot approve {stage}: {shown}; approving anyway needs --override \"REASON\""
    return evidence, None


def evidence_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between the evidence an approval named and the evidence now."""
    out = []
    for section in ("inputs", "gates"):
        a, b = old.get(section) or {}, new.get(section) or {}
        out.extend(f"{section}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
    return out


def approval_seal(stage: str, by: str, evidence: dict[str, Any], override: str | None) -> str:
    """The supervisor's seal on an approval (user key): a journal line added by hand, even
    correctly chained, carries none and approves nothing."""
    return seal(stage, str(by), json.dumps(evidence, sort_keys=True), override or "")


def revoked(spec: PipelineSpec, ws: Workspace, stage: str, approval: dict[str, Any] | None,
            verdicts: Verdicts | None = None) -> str | None:
    """Why a gated stage's output is revoked (its approval lapsed), or None when it stands."""
    if spec.stages[stage].approval != "required":
        return None
    if approval is None:
        return f"{stage} has no approval"
    if not sealed(approval.get("seal"), stage, str(approval.get("by")),
                  json.dumps(approval.get("evidence"), sort_keys=True), approval.get("override") or ""):
        return f"the approval of {stage} carries no valid seal (not granted by the supervisor): revoked"
    now = stage_evidence(spec, ws, stage, verdicts=verdicts)
    if approval.get("evidence") == now:
        return None
    changed = ", ".join(evidence_changes(approval.get("evidence") or {}, now)) or "evidence"
    return f"approval of {stage} lapsed ({changed} changed): revoked"


def approval_current(spec: PipelineSpec, ws: Workspace, stage: str, approval: dict[str, Any] | None,
                     verdicts: Verdicts | None = None) -> bool:
    """True when ``stage`` needs no approval, or its approval names the evidence there is now."""
    return revoked(spec, ws, stage, approval, verdicts) is None


def describe_approval(stage: str, approval: dict[str, Any]) -> str:
    """One line for status, the model card and the bundle; an override says so, loudly."""
    by = approval.get("by") or "?"
    gates = (approval.get("evidence") or {}).get("gates") or {}
    shown = ", ".join(f"{ac} {g.get('outcome', '?').upper().replace('_', ' ')}" for ac, g in gates.items())
    if approval.get("override"):
        return f"{stage}: approved by {by} by OVERRIDE ({approval['override']}) over {shown or 'its gates'}"
    return f"{stage}: approved by {by}" + (f" on {shown}" if shown else "")
