"""Disk as a resource: what a stage will write, whether it fits, and when a checkpoint may go.

At 7B a checkpoint is ~15 GB and the DAG makes six of them; the rehearsal box has 64 GiB of
disk. Two rules keep that honest:

* Admission: a stage whose outputs will not fit (free space - margin - what running stages
  have still to write) waits, with the reason, instead of dying half-way through a shard.
* Retention: an intermediate checkpoint (a published directory of weights, or a GGUF) is
  removed once every stage that consumes it has finished and its hash is on record; the
  manifest stays and a tombstone says what was removed and why. A stage with ``keep: true``
  keeps its outputs; an output no stage consumes is a product, and a checkpoint an acceptance
  criterion judges is evidence the gates verify: neither is removed.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from engine.refs import resolve_ref
from engine.resume import free_bytes
from engine.spec import PipelineSpec
from engine.state import PipelineState
from engine.workspace import Workspace, atomic_write_json, tree_files

GB = 1e9
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin")
SMALL_OUTPUT = 1 << 30  # adapters, sample files, results: at most this much
CHECKPOINT_INPUTS = ("model", "base")
# bytes written per byte of the input checkpoint, by stage kind (quantize: F16 GGUF + Q4_K_M ~0.3)
OUTPUT_FACTOR = {"merge": 1.0, "ties": 1.0, "prune": 1.0, "quantize": 1.31}


def weight_bytes(path: Path) -> int:
    """Bytes of the weight files under a checkpoint directory (or a single weight file)."""
    if path.is_file():
        return path.stat().st_size if path.suffix in WEIGHT_SUFFIXES else 0
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in tree_files(path) if p.suffix in WEIGHT_SUFFIXES)


def tree_bytes(path: Path) -> int:
    try:
        return sum(p.stat().st_size for p in tree_files(path)) if path.is_dir() else 0
    except OSError:
        return 0


def _random_model_bytes(params: dict) -> int:
    if params.get("materialise") != "disk":
        return 1 << 20
    from engine.gen.memory import param_count
    from engine.rehearsal import shape_of

    return 2 * param_count(asdict(shape_of(params["shape"])))  # bf16


def output_bytes(spec: PipelineSpec, ws: Workspace, stage: str) -> int:
    """What ``stage`` will write: a multiple of its input checkpoint for the kinds that rewrite
    one, a random model's bf16 size, else SMALL_OUTPUT."""
    entry = spec.stages[stage]
    if entry.kind == "random_model":
        return _random_model_bytes(entry.params)
    factor = OUTPUT_FACTOR.get(entry.kind)
    if factor is None:
        return SMALL_OUTPUT
    src = next((entry.inputs[k] for k in CHECKPOINT_INPUTS if k in entry.inputs), None)
    if src is None:
        return SMALL_OUTPUT
    return int(factor * weight_bytes(Path(resolve_ref(spec, ws, src, ws.spec_path.parent)))) + SMALL_OUTPUT


def disk_headroom(spec: PipelineSpec, ws: Workspace, state: PipelineState) -> int:
    """Free bytes on the workspace's disk less the margin and what running stages have yet to write."""
    pending = 0
    for a in state.running():
        pending += max(0, output_bytes(spec, ws, a.stage) - tree_bytes(ws.work_dir(a.stage)))
    return free_bytes(ws.root) - int(spec.settings.disk_margin_gb * GB) - pending


def disk_wait_reason(spec: PipelineSpec, ws: Workspace, state: PipelineState, stage: str) -> str | None:
    """Why ``stage`` must wait for disk space, or None when its outputs fit."""
    need = output_bytes(spec, ws, stage)
    room = disk_headroom(spec, ws, state)
    if need <= room:
        return None
    return (f"disk: needs {need / GB:.1f} GB for its outputs, {max(room, 0) / GB:.1f} GB free after the "
            f"{spec.settings.disk_margin_gb:g} GB margin and running stages' writes")


def _target(spec: PipelineSpec, ref: str) -> str:
    """``STAGE.NAME`` a reference reads, through a model alias."""
    if ref.startswith("model:") and (m := spec.models.get(ref[6:])) and m.artifact:
        return m.artifact
    return ref


def consumers(spec: PipelineSpec, stage: str, name: str) -> list[str]:
    """Stages reading ``stage.name`` (directly or through a model alias)."""
    out = []
    for s, e in spec.stages.items():
        for ref in e.inputs.values():
            if _target(spec, ref) == f"{stage}.{name}" and s not in out:
                out.append(s)
    return out


def evidence(spec: PipelineSpec) -> set[str]:
    """Artifacts an acceptance criterion judges: the gates verify them, so they stay."""
    refs = set()
    for c in spec.acceptance.values():
        refs |= {_target(spec, r) for r in [c.checkpoint, *c.checkpoints.values()] if r}
    return refs


def _is_checkpoint(path: Path) -> bool:
    """A model's weights (config.json beside them) or a GGUF: never data, results or an adapter."""
    if path.is_file() or any(path.glob("*.gguf")):
        return path.suffix == ".gguf" or path.is_dir()
    return (path / "config.json").is_file() and weight_bytes(path) > 0


def removable(spec: PipelineSpec, ws: Workspace, state: PipelineState) -> list[tuple[str, str, dict]]:
    """(stage, artifact, manifest) of every checkpoint retention may remove now."""
    out, judged = [], evidence(spec)
    for stage, entry in spec.stages.items():
        st = state.stage(stage)
        if entry.keep or not st.done:
            continue
        for name in st.latest.artifacts:
            if f"{stage}.{name}" in judged:
                continue
            path, manifest = ws.artifact_path(stage, name), ws.manifest(stage, name)
            users = consumers(spec, stage, name)
            if (not users or manifest is None or not manifest.get("sha256") or not path.exists()
                    or not _is_checkpoint(path) or not all(state.stage(u).done for u in users)):
                continue
            out.append((stage, name, manifest))
    return out


def tombstone_path(ws: Workspace, stage: str, name: str) -> Path:
    return ws.root / "artifacts" / stage / f"{name}.removed.json"


def remove_artifact(ws: Workspace, stage: str, name: str, manifest: dict, users: list[str]) -> dict:
    """Remove a consumed checkpoint; the manifest stays, a tombstone records hash, size and why."""
    path = ws.artifact_path(stage, name)
    size = tree_bytes(path) if path.is_dir() else path.stat().st_size
    record = {"stage": stage, "artifact": name, "sha256": manifest["sha256"], "bytes": size,
              "removed_at": time.time(), "reason": f"every consumer finished: {', '.join(users)}"}
    atomic_write_json(tombstone_path(ws, stage, name), record)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    return record


def apply_retention(spec: PipelineSpec, ws: Workspace, state: PipelineState) -> list[dict]:
    """Remove every checkpoint retention allows now; returns one record per removal."""
    return [remove_artifact(ws, s, n, m, consumers(spec, s, n)) for s, n, m in removable(spec, ws, state)]


def removed(ws: Workspace, stage: str, name: str) -> dict | None:
    """The tombstone of a removed artifact, if retention removed it."""
    try:
        return json.loads(tombstone_path(ws, stage, name).read_text())
    except (OSError, ValueError):
        return None
