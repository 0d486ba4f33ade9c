"""What a run would trip over, found before it starts: model directories that are missing or
unreadable (config, tokenizer, safetensors headers), adapters, datasets that are absent or do
not match their pinned sha256. ``pmat check`` runs ``check_spec_files`` on the spec's own
paths; the supervisor runs ``stage_input_problem`` on a stage's resolved inputs (upstream
artifacts included) before it launches it. Every problem is one line naming the file and
what was expected.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from engine.gen.base import gguf_problem, is_gguf
from engine.kinds import load_stage
from engine.models.files import check_model_dir, safetensors_header
from engine.random_source import is_random_source
from engine.refs import resolve_ref
from engine.spec import PARAM_REF_RE, REF_RE, DatasetEntry, PipelineSpec, param_refs
from engine.workspace import Workspace, content_hash, tree_files

PATH_KEYS = ("_path", "_dir", "_file")  # parameters that name a file or directory
_HASHES: dict[tuple, str] = {}  # content hashes of dataset paths, keyed by their files' stat identity


def _identity(path: Path) -> tuple:
    return tuple((str(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                 for p in tree_files(path) for st in [p.stat()])


def dataset_problem(name: str, entry: DatasetEntry, path: str) -> str | None:
    """A dataset that is missing, or whose content does not hash to the spec's ``sha256``."""
    if path.startswith("package:"):
        try:
            metadata.distribution(entry.package or "")
        except metadata.PackageNotFoundError:
            return f"datasets.{name}.package: {entry.package!r} is not installed"
        return None
    p = Path(path)
    if not p.exists() and entry.id:
        return f"datasets.{name}.id: {entry.id} is not fetched into this workspace (pmat data fetch {entry.id})"
    if not p.exists():
        return f"datasets.{name}.path: {p} does not exist"
    if entry.sha256 is None:
        return None
    try:
        key = _identity(p)
        got = _HASHES.get(key) or _HASHES.setdefault(key, content_hash(p))
    except OSError as exc:
        return f"datasets.{name}.path: {exc.filename or p}: cannot read: {exc.strerror}"
    if got != entry.sha256.lower():
        return f"datasets.{name}.sha256: {p} hashes to {got}, the spec pins {entry.sha256}"
    return None


def adapter_problem(path: Path) -> str | None:
    """A peft adapter directory without a readable config or weights."""
    cfg = path / "adapter_config.json"
    try:
        if not isinstance(json.loads(cfg.read_text()), dict):
            return f"{cfg}: expected a JSON object"
    except (OSError, ValueError) as exc:
        return f"{cfg}: unreadable or not JSON: {exc}"
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        return f"{path}: no adapter_model.safetensors"
    try:
        safetensors_header(weights)
    except ValueError as exc:
        return str(exc)
    return None


def path_problem(path: Path, must_be_model: bool) -> str | None:
    """A stage input that does not exist, or a model/adapter directory a stage could not load."""
    if path.is_dir() and (path / "adapter_config.json").exists():
        return adapter_problem(path)
    if not path.exists() and not must_be_model:
        return f"{path}: does not exist"
    if must_be_model and is_gguf(path):  # a GGUF model runs on llama.cpp (engine/gen/llamacpp.py)
        return gguf_problem(path)
    if is_random_source(path):  # weights drawn at load time (engine/rehearsal.py): no files to check
        return None
    if must_be_model or (path.is_dir() and (path / "config.json").exists()):
        try:
            check_model_dir(path)
        except ValueError as exc:
            return str(exc)
    return None


def check_spec_files(spec: PipelineSpec, ws: Workspace, spec_dir: Path) -> list[str]:
    """Problems with the files the spec names by path (models, datasets), one line each."""
    out = []
    for name, entry in spec.models.items():
        if entry.path:
            problem = path_problem(Path(resolve_ref(spec, ws, f"model:{name}", spec_dir)), must_be_model=True)
            out += [f"models.{name}.path: {problem}"] if problem else []
    for name, entry in spec.datasets.items():
        problem = dataset_problem(name, entry, resolve_ref(spec, ws, f"dataset:{name}", spec_dir))
        out += [problem] if problem else []
    for name in spec.stages:
        problem = param_path_problem(spec, ws, name)
        out += [f"stages.{name}.{problem}"] if problem else []
    return out


def param_path_problem(spec: PipelineSpec, ws: Workspace, stage: str) -> str | None:
    """A parameter naming a file by path (``*_path``, ``*_dir``, ``*_file``; not dataset:NAME)
    that does not exist; relative paths are taken from the workspace (a job's working directory)."""
    for key, value in spec.stages[stage].params.items():
        if key.endswith(PATH_KEYS) and isinstance(value, str) and not PARAM_REF_RE.match(value):
            path = Path(value).expanduser()
            path = path if path.is_absolute() else ws.root / path
            if not path.exists():
                return f"params.{key}: {path} does not exist"
    return None


def stage_input_problem(spec: PipelineSpec, ws: Workspace, stage: str) -> str | None:
    """The first input of ``stage`` (resolved, upstream artifacts included) a run would fail on."""
    entry = spec.stages[stage]
    described = getattr(load_stage(entry.kind), "INPUTS", {})
    datasets = {m.group(2) for ref in entry.inputs.values() if (m := REF_RE.match(ref)) and m.group(1) == "dataset"}
    datasets |= {d for _, d in param_refs(entry.params)}
    for name in sorted(datasets):
        problem = dataset_problem(name, spec.datasets[name], resolve_ref(spec, ws, f"dataset:{name}", ws.spec_path.parent))
        if problem:
            return problem
    if problem := param_path_problem(spec, ws, stage):
        return problem
    for key, ref in sorted(entry.inputs.items()):
        if ref.startswith("dataset:"):
            continue
        is_model = ref.startswith("model:") or "checkpoint dir" in described.get(key, "")
        problem = path_problem(Path(resolve_ref(spec, ws, ref, ws.spec_path.parent)), is_model)
        if problem:
            return f"inputs.{key}: {problem}"
    return None
