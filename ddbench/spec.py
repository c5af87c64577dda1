"""The suite file: pydantic models, YAML line numbers, profiles and `--set` overrides.

`load_suite(path, overrides)` reads a suite YAML (`build_suite` takes one as data: `ddbench
eval` builds its suite in memory), applies the method / evaluator `smoke` defaults and the
suite's profile when `profile=NAME` is set, applies `--set KEY=VALUE` overrides, and
validates everything — the suite's own keys and every plugin's `Params` — collecting all errors
before raising one `SuiteError` whose lines read `file:line: dotted.path: message`.

Precedence, lowest first: defaults in code < plugin `smoke` params (profile `smoke` only) < suite
YAML < the suite's profile < `--set`. A plugin's smoke params only fill what the suite leaves
unset: a suite that sets paper-scale params shrinks them in its own `smoke` profile. Methods
and evaluators are addressed by name in dotted paths (`methods.datadam.params.iterations`), or
by label when two entries share a method.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ddbench.choices import ChosenOn
from ddbench.errors import UserError
from ddbench.protocols import (
    TEACHER_ARCH,
    TEACHER_BATCH_SIZE,
    TEACHER_EPOCHS,
    TEACHER_LR,
    TEACHER_TEMPERATURE,
)
from ddbench.registry import did_you_mean

Loc = tuple[str | int, ...]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(Strict):
    name: str = "digits"  # the embedded default: scikit-learn's digits, no download
    params: dict[str, Any] = Field(default_factory=dict)


SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")  # Ray Tune search spaces


class TuneSpec(Strict):
    """A Ray Tune sweep of one method entry (`ddbench.tuning`, run by `ddbench.runner`)."""

    # selection is on the val split only (docs/results.md#splits)
    metric: Literal["val_top1"] = "val_top1"
    mode: Literal["max"] = "max"  # val_top1 is maximised (the field mirrors Ray Tune's)
    num_samples: int = Field(1, ge=1)  # samples per point of the grid (Tune's num_samples)
    # param -> {kind: values}: grid / choice [v, ...], uniform / loguniform [low, high],
    # randint [low, high) (Ray Tune's search spaces)
    space: dict[str, dict[str, Any]] = Field(default_factory=dict, min_length=1)
    scheduler: Literal["fifo", "asha"] = "fifo"  # asha stops weak trials' selection early
    # None = as many as the cluster's CPUs (GPUs) hold distill runs of the suite's resources
    max_concurrent_trials: int | None = Field(None, ge=1)
    # how a trial is scored: `eval_arch` trained `eval_seeds` times for `eval_epochs` on the
    # trial's distillate (the shared recipe of ddbench.fit otherwise), top1 on the val split
    eval_arch: str = "convnet"  # the architecture the methods distil for (DC protocol)
    eval_seeds: int = Field(2, ge=1)  # models per trial: 2 halve the seed noise of one
    eval_epochs: int = Field(300, ge=1)  # DC's 1000 cost 3x more; 300 converge on small sets
    # IPC a trial of an IPC-independent method (generators) is scored at; None = the suite's
    # first IPC. Methods distilled per IPC are scored at their job's IPC.
    eval_ipc: int | None = Field(None, ge=1)
    # the selection's protocol (`ddbench.plan._selection_spec`); None = the protocol the suite's
    # first cross_arch entry reports the method with (its paper protocol under `paper` / `both`)
    # how a generator becomes the selection models' data (cross_arch's `sampling`)
    eval_sampling: Literal["fixed", "fresh", "time_matched"] | None = None
    # what the selection models learn: hard labels, the artifact's soft labels, or the soft
    # labels of a teacher trained on the whole train split (D4M's training-time matching;
    # cross_arch's labels: teacher with the same T and teacher settings shares its teacher)
    eval_labels: Literal["hard", "soft", "teacher"] | None = None
    eval_temperature: float = Field(TEACHER_TEMPERATURE, gt=0)  # KD temperature T (cross_arch's)
    eval_teacher_arch: str = TEACHER_ARCH  # teacher network (cross_arch's default)
    eval_teacher_epochs: int = Field(TEACHER_EPOCHS, ge=1)  # its whole-split epochs (cross_arch's)
    eval_teacher_lr: float = Field(TEACHER_LR, gt=0)  # its SGD learning rate (cross_arch's)
    eval_teacher_batch_size: int = Field(TEACHER_BATCH_SIZE, ge=1)  # its batch (cross_arch's)
    # the selection models' optimiser: `ddbench.fit.OPTIMISER_FIELDS` over the shared DC recipe
    # ({} = the DC recipe); None = the protocol's, as for eval_sampling (d4m's paper protocol:
    # AdamW + cosine)
    eval_recipe: dict[str, Any] | None = None

    @field_validator("space")
    @classmethod
    def _space_kinds(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for key, dist in space.items():
            if len(dist) != 1 or next(iter(dist)) not in SPACE_KINDS:
                raise ValueError(f"space.{key} must be one of {list(SPACE_KINDS)} with its values")
            kind, values = next(iter(dist.items()))
            if not isinstance(values, list) or not values:
                raise ValueError(f"space.{key}.{kind} needs a non-empty list")
            if kind in ("uniform", "loguniform", "randint"):
                if len(values) != 2 or not all(isinstance(v, int | float) for v in values):
                    raise ValueError(f"space.{key}.{kind} needs [low, high]")
                if values[0] >= values[1] or (kind == "loguniform" and values[0] <= 0):
                    raise ValueError(
                        f"space.{key}.{kind}: need 0 < low < high for loguniform, "
                        "low < high otherwise"
                    )
        return space


class MethodSpec(Strict):
    name: str
    label: str | None = None  # tells apart two configs of one method; default = name
    params: dict[str, Any] = Field(default_factory=dict)
    # param (one set above) -> where its value was chosen: val, paper or budget (ddbench.choices)
    chosen_on: dict[str, ChosenOn] = Field(default_factory=dict)
    tune: TuneSpec | None = None

    @property
    def key(self) -> str:
        return self.label or self.name


class EvalSpec(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    # param (one set above) -> where its value was chosen: val, paper or budget (ddbench.choices)
    chosen_on: dict[str, ChosenOn] = Field(default_factory=dict)


class DistillResources(Strict):
    workers: int = Field(1, ge=1)  # Ray Train workers (data-parallel ranks) per distill job
    cpus_per_worker: float = Field(1.0, gt=0)  # one core per rank keeps a 2-core laptop usable
    gpus_per_worker: float = Field(0.0, ge=0)  # 0 = CPU; set 1 on a GPU cluster


class EvalResources(Strict):
    cpus: float = Field(1.0, gt=0)  # per eval cell (one network trained from scratch)
    gpus: float = Field(0.0, ge=0)  # fractional GPUs pack several small nets on one device

    @property
    def device(self) -> str:
        """The device class eval cells run on: the plan's cell layout and the Ray runner's
        device follow the suite's declaration, not the driver's hardware."""
        return "cuda" if self.gpus > 0 else "cpu"


class Resources(Strict):
    distill: DistillResources = Field(default_factory=DistillResources)
    eval: EvalResources = Field(default_factory=EvalResources)


class Suite(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # results/<name>, MLflow experiment
    seed: int = 0  # every random stream derives from this by hashing
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    ipc: list[int] = Field(min_length=1)  # images per class to distil
    distill_seeds: list[int] = Field(default_factory=lambda: [0])
    methods: list[MethodSpec] = Field(min_length=1)
    evals: list[EvalSpec] = Field(min_length=1)
    resources: Resources = Field(default_factory=Resources)
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("ipc")
    @classmethod
    def _positive_ipc(cls, ipc: list[int]) -> list[int]:
        if any(i < 1 for i in ipc):
            raise ValueError("every ipc must be >= 1")
        return ipc


@dataclass
class LoadedSuite:
    """A validated suite plus each plugin's validated params (same order as the lists)."""

    suite: Suite
    path: str
    method_params: list[BaseModel]
    eval_params: list[BaseModel]
    dataset_params: BaseModel
    profile: str | None = None
    overrides: list[str] = field(default_factory=list)
    lines: dict[Loc, int] = field(default_factory=dict)  # YAML line of each key / item
    set_locs: dict[Loc, str] = field(default_factory=dict)  # keys a --set override wrote

    def where(self, loc: Loc) -> str:
        """Where the value at `loc` comes from (`locate`), for errors found after loading."""
        return locate(self.path, self.lines, self.set_locs, loc)


def locate(path: str, lines: dict[Loc, int], set_locs: dict[Loc, str], loc: Loc) -> str:
    """Where the value at `loc` comes from: `file:line` of it (or of its nearest parent in the
    file), or the `--set` override that wrote it."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in set_locs:
            return set_locs[loc[:n]]
        if loc[:n] in lines:
            return f"{path}:{lines[loc[:n]]}"
    return path


class SuiteError(UserError):
    """All problems of a suite, one `file:line: path: message` per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


# --------------------------------------------------------------------------- YAML with lines


def _line_map(
    node: yaml.Node, path: Loc, lines: dict[Loc, int], dupes: list[tuple[Loc, int]]
) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                dupes.append((path + (key,), key_node.start_mark.line + 1))
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), lines, dupes)
            lines[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, path + (i,), lines, dupes)


def _read_yaml(path: Path) -> tuple[Any, dict[Loc, int]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SuiteError([f"{path}: cannot read suite: {exc.strerror}"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise SuiteError([f"{path}:{line}: {exc.problem or exc}"]) from None
    lines: dict[Loc, int] = {}
    dupes: list[tuple[Loc, int]] = []
    if node is not None:
        _line_map(node, (), lines, dupes)
    if dupes:
        raise SuiteError([f"{path}:{ln}: {_dotted(loc)}: duplicate key" for loc, ln in dupes])
    if not isinstance(data, dict):
        raise SuiteError([f"{path}:1: a suite must be a mapping of keys (name, ipc, methods, ...)"])
    return data, lines


def _dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc) or "<suite>"


# --------------------------------------------------------------------------- overrides


def _named_index(items: list[Any], key: str) -> int | None:
    """Index of the list entry called `key`: the entry whose key (its label, else its name) is
    `key`, else the one entry with that name, else `key` as a number."""

    def own_key(it: dict[str, Any]) -> Any:
        return it.get("label") or it.get("name")

    entries = [(i, it) for i, it in enumerate(items) if isinstance(it, dict)]
    for key_of in (own_key, lambda it: it.get("name")):
        hits = [i for i, it in entries if key_of(it) == key]
        if len(hits) == 1:
            return hits[0]
    return int(key) if key.isdigit() and int(key) < len(items) else None


def _entry_names(items: list[Any]) -> list[str]:
    return [str(it.get("label") or it.get("name")) for it in items if isinstance(it, dict)]


def set_path(data: dict[str, Any], dotted: str, value: Any) -> Loc:
    """Set `value` at a dotted path, addressing list entries by name; returns the list-index loc."""
    parts = dotted.split(".")
    node: Any = data
    loc: list[str | int] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = _named_index(node, part)
            if idx is None:
                hint = did_you_mean(part, _entry_names(node))
                raise ValueError(f"{_dotted(tuple(loc))} has no entry named {part!r}{hint}")
            loc.append(idx)
            if last:
                node[idx] = value
            node = node[idx]
        elif isinstance(node, dict):
            loc.append(part)
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ValueError(f"{_dotted(tuple(loc))} is a value, not a mapping")
    return tuple(loc)


def merge(base: Any, override: Any, where: str = "") -> Any:
    """Deep-merge `override` into `base`; a mapping merges into a list of named entries by name.

    A mapping naming a different plugin (`dataset: {name: digits}` over cifar10) replaces the
    old one whole, so the old plugin's params do not leak into the new one.
    """
    if isinstance(base, dict) and isinstance(override, dict):
        if "name" in override and base.get("name") != override["name"]:
            return copy.deepcopy(override)  # another plugin: its params replace, never merge
        out = dict(base)
        for k, v in override.items():
            out[k] = merge(base.get(k), v, f"{where}.{k}" if where else k)
        return out
    if isinstance(base, list) and isinstance(override, dict):
        out_list = list(base)
        for k, v in override.items():
            idx = _named_index(out_list, str(k))
            if idx is None:
                hint = did_you_mean(str(k), _entry_names(out_list))
                raise ValueError(f"{where} has no entry named {k!r}{hint}")
            out_list[idx] = merge(out_list[idx], v, f"{where}.{k}")
        return out_list
    return copy.deepcopy(override)


def parse_overrides(pairs: list[str]) -> tuple[str | None, list[tuple[str, Any]]]:
    """Split `--set` pairs into the profile name and (dotted key, YAML-parsed value) pairs."""
    profile = None
    parsed: list[tuple[str, Any]] = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise SuiteError([f"--set {pair}: expected KEY=VALUE with a dotted KEY"])
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise SuiteError([f"--set {pair}: value is not valid YAML: {exc}"]) from None
        if key == "profile":
            profile = str(value)
        else:
            parsed.append((key, value))
    return profile, parsed


# --------------------------------------------------------------------------- validation


def _plugin_defaults(data: dict[str, Any], profile: str | None) -> dict[str, Any]:
    """Under profile `smoke`, put each plugin's smoke params under the suite's own params."""
    if profile != "smoke":
        return data
    from ddbench.evals import EVALS
    from ddbench.methods import METHODS

    data = copy.deepcopy(data)
    for section, registry in (("methods", METHODS), ("evals", EVALS)):
        for entry in data.get(section) or []:
            if isinstance(entry, dict) and entry.get("name") in registry:
                smoke = getattr(registry.get(entry["name"]), "smoke", {})
                entry["params"] = {**smoke, **(entry.get("params") or {})}
    return data


def load_suite(path: str | Path, overrides: list[str] | None = None) -> LoadedSuite:
    """Read, override and validate a suite; raise `SuiteError` listing every problem."""
    raw, lines = _read_yaml(Path(path))
    return build_suite(raw, str(path), overrides, lines)


def build_suite(
    raw: dict[str, Any],
    path: str,
    overrides: list[str] | None = None,  # --set KEY=VALUE pairs; None: none
    lines: dict[Loc, int] | None = None,  # YAML line of each key; None: not from a file
) -> LoadedSuite:
    """Override and validate a suite given as data (`load_suite` reads it from YAML; `ddbench
    eval` builds one in memory). `path` names it in errors; `lines` maps keys to YAML lines."""
    lines = lines or {}
    profile, pairs = parse_overrides(overrides or [])
    problems: list[str] = []
    data = _plugin_defaults(raw, profile)
    set_locs: dict[Loc, str] = {}
    if profile is not None:
        profiles = raw.get("profiles") or {}
        if profile not in profiles:
            hint = did_you_mean(profile, list(profiles))
            raise SuiteError([f"{path}: --set profile={profile}: no such profile{hint}"])
        try:
            data = merge(data, profiles[profile])
        except ValueError as exc:
            line = lines.get(("profiles", profile), 0)
            raise SuiteError([f"{path}:{line}: profiles.{profile}: {exc}"]) from None
    for key, value in pairs:
        try:
            set_locs[set_path(data, key, value)] = f"--set {key}"
        except ValueError as exc:
            problems.append(f"--set {key}: {exc}")
    if problems:
        raise SuiteError(problems)

    def where(loc: Loc) -> str:
        return locate(path, lines, set_locs, loc)

    def pretty(loc: Loc, items: dict[str, Any]) -> str:
        """Dotted path with list entries shown by name (methods.datadam.params.x)."""
        out: list[str] = []
        node: Any = items
        for part in loc:
            if isinstance(node, list) and isinstance(part, int) and part < len(node):
                entry = node[part]
                name = entry.get("label") or entry.get("name") if isinstance(entry, dict) else None
                out.append(str(name) if name else str(part))
                node = entry
            else:
                out.append(str(part))
                node = node.get(part) if isinstance(node, dict) else None
        return ".".join(out) or "<suite>"

    def add(loc: Loc, message: str) -> None:
        problems.append(f"{where(loc)}: {pretty(loc, data)}: {message}")

    try:
        suite = Suite.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            add(tuple(err["loc"]), _message(err, data))
        raise SuiteError(problems) from None

    method_params, eval_params, dataset_params = _validate_plugins(suite, add)
    if problems:
        raise SuiteError(problems)
    return LoadedSuite(
        suite,
        path,
        method_params,
        eval_params,
        dataset_params,
        profile,
        overrides or [],
        lines,
        set_locs,
    )


def _message(err: dict[str, Any], data: Any) -> str:
    if err["type"] == "extra_forbidden":
        return f"unknown key{_hint_for(err['loc'], data)}"
    if err["type"] == "missing":
        return "required key is missing"
    return str(err["msg"])


def _hint_for(loc: tuple[Any, ...], data: Any, model: type[BaseModel] | None = None) -> str:
    """did-you-mean for an unknown key, against the fields of the model owning it."""
    key = str(loc[-1])
    if model is None:
        model = _model_at(loc[:-1])
    return did_you_mean(key, list(model.model_fields)) if model is not None else ""


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: Any = Suite
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        annotation = fields[part].annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if model is None:
            return None
    return model if isinstance(model, type) else None


def _check_tune(
    m: MethodSpec, tune: TuneSpec, i: int, params_model: type[BaseModel], add: Any
) -> None:
    """A tune block's names: space keys are the method's params, every grid / choice value
    validates as that param, `eval_arch` and `eval_teacher_arch` are registered architectures,
    `eval_recipe` holds optimiser fields of the recipe with valid values."""
    from ddbench.archs import ARCHS
    from ddbench.fit import OPTIMISER_FIELDS, Recipe

    for arch_field in ("eval_arch", "eval_teacher_arch"):
        arch = getattr(tune, arch_field)
        if arch not in ARCHS:
            hint = did_you_mean(arch, ARCHS.names())
            add(("methods", i, "tune", arch_field), f"unknown architecture {arch!r}{hint}")
    for key, value in (tune.eval_recipe or {}).items():
        loc: Loc = ("methods", i, "tune", "eval_recipe", key)
        if key not in OPTIMISER_FIELDS:
            add(loc, f"not an optimiser field of the recipe{did_you_mean(key, OPTIMISER_FIELDS)}")
            continue
        try:
            Recipe.model_validate({key: value})
        except ValidationError as exc:
            add(loc, f"{value!r}: {exc.errors()[0]['msg']}")
    for key, dist in tune.space.items():
        loc = ("methods", i, "tune", "space", key)
        if key not in params_model.model_fields:
            hint = did_you_mean(key, list(params_model.model_fields))
            add(loc, f"{m.name} has no parameter {key!r}{hint}")
            continue
        kind, values = next(iter(dist.items()))
        for j, value in enumerate(values if kind in ("grid", "choice") else []):
            try:
                params_model.model_validate({**m.params, key: value})
            except ValidationError as exc:
                errors = [e["msg"] for e in exc.errors() if e["loc"][:1] == (key,)]
                if errors:
                    add((*loc, kind, j), f"{value!r}: {errors[0]}")


def _check_chosen_on(loc: Loc, params: dict[str, Any], chosen_on: dict[str, str], add: Any) -> None:
    """`chosen_on` names params the entry sets (a value it does not set was not chosen here)."""
    for key in chosen_on:
        if key not in params:
            hint = did_you_mean(key, list(params))
            add((*loc, "chosen_on", key), f"not a param this entry sets{hint}")


def _validate_plugins(suite: Suite, add: Any) -> tuple[list[BaseModel], list[BaseModel], BaseModel]:
    """Check plugin names against the registries and their params against each Params model."""
    from ddbench.data import DATASETS, DatasetParams, dataset_params_model
    from ddbench.evals import EVALS
    from ddbench.methods import METHODS

    def check(loc: Loc, model: type[BaseModel], params: dict[str, Any]) -> BaseModel | None:
        try:
            return model.model_validate(params)
        except ValidationError as exc:
            for err in exc.errors():
                sub = (*loc, *err["loc"])
                if err["type"] == "extra_forbidden":
                    add(sub, "unknown parameter" + _hint_for(err["loc"], params, model))
                else:
                    add(sub, str(err["msg"]))
            return None

    dataset_params: BaseModel = DatasetParams()
    if suite.dataset.name not in DATASETS:
        add(
            ("dataset", "name"),
            f"unknown dataset {suite.dataset.name!r}"
            + did_you_mean(suite.dataset.name, DATASETS.names()),
        )
    else:
        model = dataset_params_model(suite.dataset.name)
        dataset_params = check(("dataset", "params"), model, suite.dataset.params) or model()

    method_params: list[BaseModel] = []
    keys: dict[str, int] = {}
    for i, m in enumerate(suite.methods):
        if m.key in keys:
            add(("methods", i, "label"), f"two entries are called {m.key!r}: give one a label")
        keys[m.key] = i
        if m.name not in METHODS:
            add(
                ("methods", i, "name"),
                f"unknown method {m.name!r}" + did_you_mean(m.name, METHODS.names()),
            )
            continue
        method = METHODS.get(m.name)
        _check_chosen_on(("methods", i), m.params, m.chosen_on, add)
        params = check(("methods", i, "params"), method.Params, m.params)
        method_params.append(params if params is not None else method.Params.model_construct())
        if m.tune is not None:
            _check_tune(m, m.tune, i, method.Params, add)

    eval_params: list[BaseModel] = []
    for i, e in enumerate(suite.evals):
        if e.name not in EVALS:
            add(
                ("evals", i, "name"),
                f"unknown evaluator {e.name!r}" + did_you_mean(e.name, EVALS.names()),
            )
            continue
        evaluator = EVALS.get(e.name)
        _check_chosen_on(("evals", i), e.params, e.chosen_on, add)
        params = check(("evals", i, "params"), evaluator.Params, e.params)
        eval_params.append(params if params is not None else evaluator.Params.model_construct())
    return method_params, eval_params, dataset_params
