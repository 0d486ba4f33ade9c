"""The pipeline spec: one YAML file holds every model, dataset, stage and parameter.

``load_spec(path)`` returns a validated ``PipelineSpec`` or raises ``SpecError``
whose message is one line naming the file, the key path and what was expected.
Stage parameters are validated against the stage module's own ``Params`` model,
so a typo in a hyperparameter is caught before anything runs.
"""

from __future__ import annotations

import ast
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.criteria import spec_problems
from engine.data.pins import DATASETS
from engine.kinds import load_stage, stage_kinds

REF_RE = re.compile(r"^(model|dataset):([A-Za-z0-9_\-]+)$|^([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)$")
PARAM_REF_RE = re.compile(r"^dataset:([A-Za-z0-9_\-]+)(\.sha256)?$")  # .sha256: its pinned hash
GIB = 1 << 30
DISTRIBUTED_KINDS = ("sft", "dpo")  # DDP trainers (engine/sdk/launch.py); generation shards over engines (engine.gen.parallel)


class SpecError(ValueError):
    """A spec problem, phrased as one line: FILE: KEY.PATH: what was expected."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    """A model by local path, or produced by a stage (``artifact: STAGE.NAME``)."""

    path: str | None = None
    artifact: str | None = None
    description: str = ""


class DatasetEntry(_Strict):
    id: str | None = None  # an engine/data/pins.py id: the file `pmat data fetch ID` recorded
    path: str | None = None
    sha256: str | None = None
    package: str | None = None
    description: str = ""


class WorkItem(_Strict):
    title: str
    depends_on: list[str] = Field(default_factory=list)
    acceptance: list[str] = Field(default_factory=list)


class StageEntry(_Strict):
    kind: str
    gpus: int | None = Field(default=None, ge=1)  # DDP ranks (sft, dpo) or generation engines: docs/SCALEOUT.md
    executor: Literal["local", "slurm"] | None = None  # default settings.executor
    partition: str | None = None  # slurm; default settings.slurm.partition
    time_limit_h: float | None = Field(default=None, gt=0)  # slurm --time; default duration_h x slurm.time_factor
    work_item: str | None = None
    after: list[str] = Field(default_factory=list)
    inputs: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    memory_gb: float = Field(ge=0, allow_inf_nan=False)
    duration_h: float = Field(gt=0, allow_inf_nan=False)
    approval: Literal["required", "none"] = "none"
    resume: bool = True
    max_attempts: int = Field(default=3, ge=1)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")  # a typo fails here, not in torch
    seed: int = 0
    keep: bool = False  # outputs stay after every consumer finished (engine/disk.py retention)


class Criterion(_Strict):
    """An acceptance criterion: an expression over results of named checkpoints."""

    description: str = ""
    work_item: str | None = None
    checkpoint: str | None = None
    checkpoints: dict[str, str] = Field(default_factory=dict)
    expr: str
    protocol: dict[str, Any] = Field(default_factory=dict)

    @field_validator("expr")
    @classmethod
    def _parse(cls, v: str) -> str:
        try:
            ast.parse(v, mode="eval")
        except SyntaxError as exc:
            raise ValueError(f"not a valid expression: {exc.msg}") from None
        return v


class SlurmSettings(BaseModel):
    """``settings.slurm`` of a pipeline spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_factor: float = Field(default=2.0, gt=0)  # --time = duration_h x this, unless the stage sets time_limit_h
    cpus_per_task: int | None = Field(default=None, gt=0)
    extra_args: list[str] = Field(default_factory=list)  # passed to sbatch as they are


class Settings(_Strict):
    executor: Literal["local", "slurm"] = "local"  # where stages run: docs/SCALEOUT.md
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)
    memory_margin_gb: float = Field(default=2.0, ge=0, allow_inf_nan=False)
    memory_budget_gb: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    poll_interval_s: float = Field(default=0.5, gt=0, allow_inf_nan=False)
    cancel_grace_s: float = Field(default=10.0, ge=0, allow_inf_nan=False)
    disk_margin_gb: float = Field(default=2.0, ge=0, allow_inf_nan=False)  # kept free on the workspace's disk


class PipelineSpec(_Strict):
    name: str
    description: str = ""
    settings: Settings = Field(default_factory=Settings)
    models: dict[str, ModelEntry] = Field(default_factory=dict)
    datasets: dict[str, DatasetEntry] = Field(default_factory=dict)
    work_items: dict[str, WorkItem] = Field(default_factory=dict)
    stages: dict[str, StageEntry]
    acceptance: dict[str, Criterion] = Field(default_factory=dict)

    # -- derived ----------------------------------------------------------------
    def deps(self, stage: str) -> list[str]:
        """Stages that must finish before ``stage`` (explicit ``after`` + input producers)."""
        entry = self.stages[stage]
        out = list(entry.after)
        for ref in entry.inputs.values():
            src = self.ref_stage(ref)
            if src and src not in out:
                out.append(src)
        return out

    def ref_stage(self, ref: str) -> str | None:
        """The stage producing a reference, following model aliases (None for paths)."""
        m = REF_RE.match(ref)
        if m is None:
            return None
        if m.group(1) == "model":
            entry = self.models.get(m.group(2))
            return self.ref_stage(entry.artifact) if entry and entry.artifact else None
        if m.group(1) == "dataset":
            return None
        return m.group(3)

    def canonical_ref(self, ref: str) -> str:
        """A reference with model aliases followed to the artifact they name."""
        m = REF_RE.match(ref)
        if m and m.group(1) == "model" and m.group(2) in self.models and self.models[m.group(2)].artifact:
            return self.canonical_ref(str(self.models[m.group(2)].artifact))
        return ref

    def stages_of(self, item: str) -> list[str]:
        return [s for s, e in self.stages.items() if e.work_item == item]

    def gated_by(self, criterion: str) -> list[str]:
        """The stages that wait for approval on a criterion: gated stages of work items it accepts."""
        return [s for s, e in self.stages.items() if e.approval == "required" and e.work_item
                and criterion in self.work_items[e.work_item].acceptance]


def _key_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if p not in ("function-after",)) or "(top level)"


def _first_error(exc: ValidationError) -> dict[str, Any]:
    """The error to show: an unknown key before anything else (a typo also makes the key it
    misspells "missing"; the typo is what the user has to fix)."""
    errors = exc.errors()
    return next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])


def _fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The keys a pydantic model accepts at ``loc`` (the parent of an unknown key)."""
    for part in loc:
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(str(part))
            if field is None:
                return []
            model = field.annotation
        elif typing.get_origin(model) is dict:
            model = typing.get_args(model)[1]
        else:
            return []
        while typing.get_origin(model) in (typing.Union, types.UnionType):
            model = next((a for a in typing.get_args(model) if a is not type(None)), None)
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def did_you_mean(word: str, known: list[str]) -> str:
    """`` (did you mean 'x'?)`` when a known name is close to ``word``, else ''."""
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(err: dict[str, Any], model: Any = None) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _fields_at(model, err["loc"][:-1]) if model is not None else []
        return "unknown key" + did_you_mean(str(err["loc"][-1]), known)
    if kind == "missing":
        return "required key is missing"
    got = err.get("input")
    got_s = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    return f"{err['msg']}{got_s}"


STAGE_NAME_RE = re.compile(r"[A-Za-z0-9_]+")


def _check_refs(spec: PipelineSpec, where: str) -> None:
    for name in spec.stages:
        if not STAGE_NAME_RE.fullmatch(name):
            raise SpecError(f"{where}: stages.{name}: a stage name is letters, digits and '_' "
                            "(it names directories, job ids and STAGE.ARTIFACT references)")
    for name, st in spec.stages.items():
        for dep in st.after:
            if dep not in spec.stages:
                raise SpecError(f"{where}: stages.{name}.after: unknown stage {dep!r}")
        if st.work_item is not None and st.work_item not in spec.work_items:
            raise SpecError(f"{where}: stages.{name}.work_item: unknown work item {st.work_item!r}")
        for key, ref in st.inputs.items():
            _check_ref(spec, ref, f"{where}: stages.{name}.inputs.{key}")
        for key, dataset in param_refs(st.params):
            if dataset not in spec.datasets:
                raise SpecError(f"{where}: stages.{name}.params.{key}: unknown dataset {dataset!r}")
    for name, data in spec.datasets.items():
        if data.id is not None and data.id not in DATASETS:
            raise SpecError(f"{where}: datasets.{name}.id: unknown dataset id {data.id!r} (known: {', '.join(DATASETS)})")
        if data.id is not None and (data.path or data.package):
            raise SpecError(f"{where}: datasets.{name}: 'id' names a fetched file; drop 'path'/'package'")
    for name, entry in spec.models.items():
        if (entry.path is None) == (entry.artifact is None):
            raise SpecError(f"{where}: models.{name}: expected exactly one of 'path' or 'artifact'")
        if entry.artifact:
            _check_ref(spec, entry.artifact, f"{where}: models.{name}.artifact")
    for name, item in spec.work_items.items():
        for dep in item.depends_on:
            if dep not in spec.work_items:
                raise SpecError(f"{where}: work_items.{name}.depends_on: unknown work item {dep!r}")
        for ac in item.acceptance:
            if ac not in spec.acceptance:
                raise SpecError(f"{where}: work_items.{name}.acceptance: unknown criterion {ac!r}")
    for name, crit in spec.acceptance.items():
        if (crit.checkpoint is None) == (not crit.checkpoints):
            raise SpecError(f"{where}: acceptance.{name}: expected exactly one of 'checkpoint' or 'checkpoints'")
        refs = {"checkpoint": crit.checkpoint} if crit.checkpoint else {f"checkpoints.{k}": v for k, v in crit.checkpoints.items()}
        for key, ref in refs.items():
            _check_ref(spec, ref, f"{where}: acceptance.{name}.{key}")


def param_refs(params: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(key path, dataset name) of every ``dataset:NAME`` value in stage parameters."""
    if isinstance(params, dict):
        return [r for k, v in params.items() for r in param_refs(v, f"{prefix}{k}.")]
    if isinstance(params, list):
        return [r for i, v in enumerate(params) for r in param_refs(v, f"{prefix}{i}.")]
    if isinstance(params, str) and (m := PARAM_REF_RE.match(params)):
        return [(prefix.rstrip("."), m.group(1))]
    return []


def _check_ref(spec: PipelineSpec, ref: str, where: str) -> None:
    m = REF_RE.match(ref)
    if m is None:
        raise SpecError(f"{where}: expected 'model:NAME', 'dataset:NAME' or 'STAGE.ARTIFACT' (got {ref!r})")
    if m.group(1) == "model" and m.group(2) not in spec.models:
        raise SpecError(f"{where}: unknown model {m.group(2)!r}{did_you_mean(m.group(2), list(spec.models))}")
    if m.group(1) == "dataset" and m.group(2) not in spec.datasets:
        raise SpecError(f"{where}: unknown dataset {m.group(2)!r}{did_you_mean(m.group(2), list(spec.datasets))}")
    if m.group(3) is not None and m.group(3) not in spec.stages:
        raise SpecError(f"{where}: unknown stage {m.group(3)!r}{did_you_mean(m.group(3), list(spec.stages))}")


def _find_cycle(nodes: list[str], deps: Any) -> list[str] | None:
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        color[n] = 1
        stack.append(n)
        for d in deps(n):
            if color.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in color and (cyc := visit(d)):
                return cyc
        stack.pop()
        color[n] = 2
        return None

    for n in nodes:
        if n not in color and (cyc := visit(n)):
            return cyc
    return None


def _check_cycles(spec: PipelineSpec, where: str) -> None:
    cyc = _find_cycle(list(spec.stages), spec.deps)
    if cyc:
        raise SpecError(f"{where}: stages: dependency cycle {' -> '.join(cyc)}")
    cyc = _find_cycle(list(spec.work_items), lambda n: spec.work_items[n].depends_on)
    if cyc:
        raise SpecError(f"{where}: work_items: dependency cycle {' -> '.join(cyc)}")


def check_ranks(kind: str, gpus: int, params: dict[str, Any]) -> str | None:
    """Why a stage of ``kind`` cannot run on ``gpus`` ranks, or None (the spec's check, one line)."""
    if gpus > 1 and kind in DISTRIBUTED_KINDS and params.get("grad_accum", 1) % gpus:
        return f"params.grad_accum {params.get('grad_accum')} is not divisible by gpus {gpus}"
    return None


def ranks(kind: str, gpus: int) -> int:
    """The processes a job of ``kind`` on ``gpus`` GPUs runs as: N DDP ranks for a trainer, else one."""
    return gpus if gpus > 1 and kind in DISTRIBUTED_KINDS else 1


def _check_stage_params(spec: PipelineSpec, where: str) -> None:
    outputs: dict[str, set[str]] = {}
    for name, st in spec.stages.items():
        try:
            module = load_stage(st.kind)
        except ValueError as exc:
            raise SpecError(f"{where}: stages.{name}.kind: {exc}{did_you_mean(st.kind, stage_kinds())}") from None
        try:
            params = module.Params(**st.params)
        except ValidationError as exc:
            err = _first_error(exc)
            raise SpecError(f"{where}: stages.{name}.params.{_key_path(err['loc'])}: {_describe(err, module.Params)}") from None
        try:
            check_input_names(module, params, set(st.inputs))
        except ValueError as exc:
            raise SpecError(f"{where}: stages.{name}.{exc}") from None
        if why := check_ranks(st.kind, st.gpus or 1, st.params):
            raise SpecError(f"{where}: stages.{name}.gpus: {why}")
        outputs[name] = set(getattr(module, "OUTPUTS", {})) | ({"output"} if getattr(params, "publish_output", False) else set())
    for key, ref in _artifact_refs(spec):
        stage, _, artifact = ref.partition(".")
        if artifact not in outputs[stage]:
            raise SpecError(f"{where}: {key}: stage {stage!r} (kind {spec.stages[stage].kind}) has no output "
                            f"{artifact!r}{did_you_mean(artifact, sorted(outputs[stage]))}; it publishes {sorted(outputs[stage])}")


def _artifact_refs(spec: PipelineSpec) -> list[tuple[str, str]]:
    """(key path, 'STAGE.ARTIFACT') of every reference to a stage's output."""
    refs = [(f"stages.{n}.inputs.{k}", r) for n, st in spec.stages.items() for k, r in st.inputs.items()]
    refs += [(f"models.{n}.artifact", m.artifact) for n, m in spec.models.items() if m.artifact]
    for n, c in spec.acceptance.items():
        refs += [(f"acceptance.{n}.checkpoint", c.checkpoint)] if c.checkpoint else []
        refs += [(f"acceptance.{n}.checkpoints.{k}", r) for k, r in c.checkpoints.items()]
    return [(k, r) for k, r in refs if (m := REF_RE.match(r)) and m.group(3)]


def check_input_names(module: Any, params: Any, given: set[str]) -> None:
    """The input names of a stage of kind ``module`` against what it declares; ValueError naming
    ``inputs`` or ``params`` and what is wrong."""
    expected = set(getattr(module, "INPUTS", {}))
    prefix, least, _ = getattr(module, "VARIADIC_INPUTS", ("", 0, ""))
    variadic = {g for g in given - expected if prefix and g.startswith(prefix)}
    takes = sorted(expected) + ([f"{prefix}* (at least {least})"] if prefix else [])
    missing, extra = sorted(expected - given), sorted(given - expected - variadic)
    if missing or extra:
        what = f"missing {missing}" if missing else f"unexpected {extra}"
        raise ValueError(f"inputs: {what} (stage kind {module.__name__.rsplit('.', 1)[-1]!r} takes {takes})")
    if len(variadic) < least:
        raise ValueError(f"inputs: needs at least {least} named {prefix}*, got {sorted(variadic)}")
    if hasattr(module, "check_inputs"):
        module.check_inputs(params, given)


def _check_gates(spec: PipelineSpec, where: str) -> None:
    """Protocol pins and gate order (engine.criteria.spec_problems): a gated stage must not be
    able to run before the evaluations its criteria read."""
    for problem in spec_problems(spec)[:1]:
        raise SpecError(f"{where}: {problem}")


def parse_spec(data: Any, where: str = "<spec>", *, check_params: bool = True) -> PipelineSpec:
    """Validate an already-loaded YAML document.

    ``check_params=False`` checks keys, references and cycles but not each stage's
    parameters against its module's ``Params``: that imports every stage module (torch,
    transformers: seconds), which a console must not wait for before its first frame.
    """
    if not isinstance(data, dict):
        raise SpecError(f"{where}: (top level): expected a mapping of keys, got {type(data).__name__}")
    try:
        spec = PipelineSpec(**data)
    except ValidationError as exc:
        err = _first_error(exc)
        raise SpecError(f"{where}: {_key_path(err['loc'])}: {_describe(err, PipelineSpec)}") from None
    _check_refs(spec, where)
    _check_cycles(spec, where)
    _check_gates(spec, where)
    if check_params:
        _check_stage_params(spec, where)
    return spec


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (YAML lets the last one win
    silently: a second ``settings:`` block, two stages of one name). Keys merged in with
    ``<<:`` may be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key] + 1}; YAML would keep only the last)",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_spec(path: Path | str) -> PipelineSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_spec(data, str(path))


def pipeline_path(name: str) -> Path:
    """A pipeline shipped with pmat (``pmat`` or ``demo``)."""
    return Path(__file__).parent / "pipelines" / f"{name}.yaml"
