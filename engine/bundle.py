"""The submission bundle: files, a generated model card, checksums, validation."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.approvals import describe_approval
from engine.contracts import ContractError, load_contracts
from engine.dag import topo_order
from engine.gates import evaluate_gates
from engine.results import read_ledger
from engine.spec import PipelineSpec
from engine.state import load_state
from engine.workspace import Workspace, content_hash, sha256_file, tree_files

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
SUMS = "SHA256SUMS"
CARD = "MODEL_CARD.md"


def _lineage(ws: Workspace, spec: PipelineSpec) -> list[dict[str, Any]]:
    state = load_state(ws)
    rows = []
    for name in topo_order(spec):
        st = state.stages.get(name)
        ok = [a for a in st.attempts if a.outcome == "ok"] if st else []
        if not ok:
            continue
        a = ok[-1]
        outputs = {}
        for art in a.artifacts:
            m = ws.manifest(name, art)
            outputs[art] = m["sha256"] if m else None
        rows.append({"stage": name, "kind": spec.stages[name].kind, "job": a.job_id, "params": a.params,
                     "inputs": dict(spec.stages[name].inputs), "outputs": outputs,
                     "seconds": round((a.finished_at or 0) - (a.started_at or 0), 1)})
    return rows


def counted_records(ws: Workspace) -> tuple[list[dict[str, Any]], int]:
    """Ledger records that count, each once (by key), and how many lines were ignored."""
    seen: set[str] = set()
    out, ignored = [], 0
    for r in read_ledger(ws):
        if r["ignored"]:
            ignored += 1
        elif str(r.get("key") or r["digest"]) not in seen:
            seen.add(str(r.get("key") or r["digest"]))
            out.append(r)
    return out, ignored


def model_card(ws: Workspace, spec: PipelineSpec, model_name: str, license_id: str, model_hash: str) -> str:
    lines = [f"---\nlicense: {license_id}\ntags: [code, pmat]\n---", f"# {model_name}", "",
             f"Built by pmat pipeline `{spec.name}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
             f"Checkpoint content hash: `{model_hash}`.", "", "## Gates", "", "| criterion | verdict | detail |", "|---|---|---|"]
    for name, g in evaluate_gates(spec, ws, full_hash=True).items():
        lines.append(f"| {name} | {g.outcome} | {g.reason.replace('|', '/')} |")
    approvals = load_state(ws).approvals
    lines += ["", "## Approvals", ""]
    lines += [f"- {describe_approval(stage, a)}" for stage, a in sorted(approvals.items())] or ["- none"]
    records, ignored = counted_records(ws)
    lines += ["", "## Results", "", f"Records with provenance only ({ignored} ledger line(s) ignored).", "",
              "| benchmark | model hash | metrics | protocol |", "|---|---|---|---|"]
    for r in records:
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (r.get("metrics") or {}).items())
        proto = r.get("protocol_id") or json.dumps(r.get("protocol"), sort_keys=True)
        lines.append(f"| {r.get('benchmark')} | `{str(r.get('model_hash'))[:12]}` | {metrics} | `{proto}` |")
    lines += ["", "## Lineage", ""]
    for row in _lineage(ws, spec):
        outs = ", ".join(f"{k}=`{str(v)[:12]}`" for k, v in row["outputs"].items()) or "-"
        lines.append(f"- **{row['stage']}** ({row['kind']}, job {row['job']}, {row['seconds']} s): "
                     f"inputs {json.dumps(row['inputs'])}; outputs {outs}; params `{json.dumps(row['params'], sort_keys=True)}`")
    lines += ["", "## Contracts", ""]
    try:
        for c in load_contracts():
            lines.append(f"- `{c.id}` v{c.version}: {c.title} ({len(c.obligations)} obligations, bound to tests)")
    except ContractError as exc:
        lines.append(f"- contracts could not be read: {exc}")
    return "\n".join(lines) + "\n"


def single_gguf(path: Path) -> Path:
    """The GGUF file itself, or the one GGUF inside an artifact directory."""
    path = Path(path)
    if path.is_file():
        return path
    found = sorted(path.glob("*.gguf"))
    if len(found) != 1:
        raise FileNotFoundError(f"{path}: expected exactly one .gguf file, found {len(found)}")
    return found[0]


def write_bundle(out: Path, ws: Workspace, spec: PipelineSpec, *, gguf: Path, model: Path, model_name: str,
                 license_id: str, progress: Callable[..., None] | None = None) -> None:
    out.mkdir(parents=True)
    shutil.copyfile(single_gguf(gguf), out / "model.gguf")
    shutil.copytree(model, out / "checkpoint")
    if progress:
        progress(1, 3, "steps")
    (out / CARD).write_text(model_card(ws, spec, model_name, license_id, content_hash(model)))
    if progress:
        progress(2, 3, "steps")
    sums = [f"{sha256_file(p)}  {p.relative_to(out).as_posix()}" for p in tree_files(out)]
    (out / SUMS).write_text("\n".join(sums) + "\n")
    if progress:
        progress(3, 3, "steps")


def validate_bundle(path: Path) -> list[str]:
    """Problems with a bundle (empty when it is complete and every checksum matches)."""
    path = Path(path)
    problems = []
    for required in ("model.gguf", CARD, SUMS, "checkpoint/config.json", *(f"checkpoint/{t}" for t in TOKENIZER_FILES)):
        if not (path / required).is_file():
            problems.append(f"{path / required}: missing")
    if (path / SUMS).is_file():
        listed = {}
        for line in (path / SUMS).read_text().splitlines():
            digest, _, rel = line.partition("  ")
            listed[rel] = digest
        for rel, digest in listed.items():
            f = path / rel
            if not f.is_file():
                problems.append(f"{f}: listed in {SUMS} but missing")
            elif sha256_file(f) != digest:
                problems.append(f"{f}: sha256 differs from {SUMS}")
        extra = [p.relative_to(path).as_posix() for p in tree_files(path) if p.name != SUMS and p.relative_to(path).as_posix() not in listed]
        problems.extend(f"{path / e}: not listed in {SUMS}" for e in extra)
    return problems
