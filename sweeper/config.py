"""Typed, validated sweep configuration.

A config is a YAML file of the shape in DESIGN.md. :func:`load_config` reads it, applies
``--set dotted.key=value`` overrides and validates everything a sweep needs *before* anything
is written: unknown keys (with the closest valid key suggested), types, ranges, the method's
hyperparameter names, the search space and the selection parameter. Every problem surfaces as
one :class:`ConfigError` whose message names the key and what is wrong.

This module is layer 0: it imports neither torch nor ray, mlflow or optuna.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sweeper.hyperparams import METHOD_PARAMS

__all__ = [
    "ConfigError",
    "SweeperConfig",
    "load_config",
    "parse_overrides",
    "METHOD_PARAMS",
    "LABEL_FREE_METRICS",
]

DatasetName = Literal["digits", "cifar10", "cifar100", "stl10", "imagefolder"]
MethodName = Literal["simclr", "vicreg", "vicreg_exp", "vicreg_ctr", "barlow_twins", "byol", "dino", "swav", "carp"]
BackboneName = Literal["small_cnn", "resnet18", "resnet50", "vit_s16"]
LabelFreeName = Literal["rankme", "classical_rank", "alpha_req", "lidar", "nesum", "stable_rank", "self_clustering"]
LABEL_FREE_METRICS: tuple[str, ...] = LabelFreeName.__args__  # type: ignore[attr-defined]

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class ConfigError(ValueError):
    """A configuration problem, phrased as one line that names the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --- sections ----------------------------------------------------------------------------------


class DataConfig(_Strict):
    dataset: DatasetName = "digits"
    root: Path | None = None
    image_size: Annotated[int, Field(ge=8, le=1024)] = 16
    flip: bool | None = None  # None: on for natural images, off for digits (digits are not symmetric)
    # Area range of the global views' random resized crops; None: (0.3, 1), or with multi-crop
    # (method.params.num_local_crops > 0) (local_crop_scale[1], 1) as DINO (0.4, 1) and SwAV (0.14, 1).
    crop_scale: tuple[float, float] | None = None
    local_crop_scale: tuple[float, float] = (0.05, 0.4)  # multi-crop local views (DINO; SwAV: 0.05-0.14)
    local_crop_size: Annotated[int, Field(ge=4)] | None = None  # None: image_size · 96/224, as DINO/SwAV
    # imagefolder: decode into memory (true), stream from disk through DataLoader workers (false),
    # or auto: stream when the decoded train/ split would exceed 4 GiB (e.g. ImageNet).
    in_memory: bool | Literal["auto"] = "auto"
    num_workers: NonNegativeInt | None = None  # decoding workers; None: min(4, CPUs - 1)

    @field_validator("crop_scale", "local_crop_scale")
    @classmethod
    def _area_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] < value[1] <= 1:
            raise ValueError(f"an area range [low, high] with 0 < low < high <= 1 expected, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _local_crops_and_streaming(self) -> DataConfig:
        if self.local_crop_size is not None and self.local_crop_size > self.image_size:
            raise ValueError(
                f"local_crop_size {self.local_crop_size} exceeds image_size {self.image_size}: "
                "local crops are the small views"
            )
        if self.in_memory is False and self.dataset != "imagefolder":
            raise ValueError(f"in_memory: false (streaming) is for imagefolder roots; {self.dataset} fits in memory")
        return self

    @model_validator(mode="after")
    def _root_exists(self) -> DataConfig:
        if self.dataset == "digits":
            return self
        if self.root is None:
            raise ValueError(f"dataset {self.dataset!r} needs a local data root: set data.root to its directory")
        if not Path(self.root).expanduser().is_dir():
            raise ValueError(
                f"data root {str(self.root)!r} does not exist: point data.root at the "
                f"{self.dataset} directory (nothing is downloaded)"
            )
        return self


class MethodConfig(_Strict):
    name: MethodName = "vicreg"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _typed_params(self) -> MethodConfig:
        model = METHOD_PARAMS.get(self.name)
        if model is None:
            raise ValueError(f"method {self.name!r} is not implemented yet; available: {sorted(METHOD_PARAMS)}")
        unknown = set(self.params) - set(model.model_fields)
        if unknown:
            key = sorted(unknown)[0]
            raise ValueError(
                f"{self.name} has no hyperparameter {key!r}{_suggest(key, model.model_fields)}; "
                f"it has {sorted(model.model_fields)}"
            )
        typed = model.model_validate(self.params).model_dump()
        object.__setattr__(self, "params", typed)
        return self


class ModelConfig(_Strict):
    backbone: BackboneName = "small_cnn"
    projector: Annotated[list[PositiveInt], Field(min_length=1)] = Field(default_factory=lambda: [256, 128])
    cifar_stem: bool | None = None  # ResNets: 3x3 stem without max-pool; None = auto (image_size <= 64)


class TrainConfig(_Strict):
    epochs: PositiveInt = 40
    batch_size: Annotated[int, Field(ge=2)] = 256
    optimizer: Literal["adamw", "sgd", "lars"] = "adamw"
    lr: PositiveFloat = 1.0e-3
    weight_decay: NonNegativeFloat = 1.0e-5
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    warmup_epochs: NonNegativeInt = 2
    checkpoint_every: PositiveInt | None = None  # epochs; None = every evaluation
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Mixed precision: auto = bf16 autocast on a CUDA device that supports it, else fp32.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool | None = None  # None = on (CUDA tensor cores; oneDNN on CPU)


class CollapseConfig(_Strict):
    """Abort a trial whose embedding RankMe stays below ``max(fraction · K, floor)`` (K: the
    embedding dimension) for ``patience`` consecutive evaluations: ``status=collapsed``."""

    fraction: Annotated[float, Field(ge=0, lt=1)] = 0.02
    floor: Annotated[float, Field(ge=1)] = 1.5
    patience: PositiveInt = 2


class EvaluationConfig(_Strict):
    every_n_epochs: PositiveInt = 5
    rankme_samples: PositiveInt = 25600
    label_free: list[LabelFreeName] = Field(default_factory=lambda: ["rankme"])
    oracle: list[Literal["linear", "knn"]] = Field(default_factory=lambda: ["linear", "knn"])
    oracle_datasets: list[DataConfig] = Field(default_factory=list)
    lidar_samples: Annotated[int, Field(ge=2)] = 1000  # n clean samples for LiDAR
    lidar_views: Annotated[int, Field(ge=2)] = 8  # q augmented views of each
    knn_k: PositiveInt = 20
    knn_temperature: PositiveFloat = 0.07
    linear_epochs: PositiveInt = 100
    collapse: CollapseConfig | None = None  # None: never abort; {} for the defaults


class ParamSpec(_Strict):
    """One searched hyperparameter: an ordered list of ``values``, or a ``low``..``high`` range."""

    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpec:
        if self.values is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either values or low/high, not both")
            if not self.values:
                raise ValueError("values is empty: list at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give values: [...] or both low and high")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log-scale bounds must be > 0 (low is {self.low})")
        return self


class SearchConfig(_Strict):
    algorithm: Literal["grid", "optuna", "random"] = "grid"
    objective: str = "rankme/embedding"
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    num_samples: PositiveInt = 1
    max_concurrent: PositiveInt = 2
    resources: Resources = Field(default_factory=lambda: Resources())
    scheduler: Literal["asha", "hyperband"] | None = None  # early stopping on the objective
    grace_period: PositiveInt = 5  # epochs before the scheduler may stop a trial
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0
    max_failures: NonNegativeInt = 0
    # Optuna study storage for algorithm optuna/random: an RDB URL (sqlite:///optuna.db,
    # postgresql://...) or journal:PATH (a journal file; safe for several processes, not on NFS).
    storage: str | None = None

    @field_validator("storage")
    @classmethod
    def _known_storage(cls, value: str | None) -> str | None:
        if value is None or value.startswith("journal:") or "://" in value:
            return value
        raise ValueError(
            f"unknown storage {value!r}: use an RDB URL (sqlite:///optuna.db, postgresql://...) or journal:PATH"
        )

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Define-by-run search space: sample every key of ``space`` from an Optuna trial.

        The one definition shared by Ray Tune's ``OptunaSearch`` and
        :func:`sweeper.objective.make_objective` (any object with Optuna's ``suggest_*``
        methods works, e.g. ``optuna.trial.FixedTrial``). Returns ``{dotted key: value}``.
        """
        params: dict[str, Any] = {}
        for key, spec in self.space.items():
            if spec.values is not None:
                params[key] = trial.suggest_categorical(key, spec.values)
            elif spec.integer:
                params[key] = trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log)
            else:
                params[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
        return params

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, value: str) -> str:
        if value in {"rankme/embedding", "rankme/representation"} or value.startswith(("oracle/", "label_free/")):
            return value
        raise ValueError(
            f"unknown objective {value!r}: use rankme/embedding, rankme/representation, "
            "label_free/<name> or oracle/<probe>/<dataset>"
        )


class Resources(_Strict):
    cpu: PositiveFloat = 1.0
    gpu: NonNegativeFloat = 0.0


class SelectionConfig(_Strict):
    rule: Literal["max", "plateau"] = "plateau"
    param: str | None = None
    tolerance: Annotated[float, Field(gt=0, lt=1)] = 0.01
    order: Literal["ascending", "descending"] = "ascending"


class TrackingConfig(_Strict):
    uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        if re.match(r"^https?://[^/@\s]+@", value):
            raise ValueError(
                "credentials do not belong in the URI (it is logged and saved): set "
                "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN instead"
            )
        return value


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class SweeperConfig(_Strict):
    """The whole sweep: see DESIGN.md for the meaning of each key."""

    name: str
    storage_path: str = "./sweeps"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("storage_path")
    @classmethod
    def _storage_uri(cls, value: str) -> str:
        from sweeper.storage import check_storage_uri, is_uri

        return check_storage_uri(value) if is_uri(value) else value

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a usable sweep name: use letters, digits, '.', '_' or '-'")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> SweeperConfig:
        plain = self.to_dict()
        for key, spec in self.search.space.items():
            _check_dotted_key(plain, key, where="search.space")
            if self.search.algorithm == "grid" and spec.values is None:
                raise ValueError(
                    f"search.space.{key}: the grid algorithm needs values: [...] "
                    "(low/high ranges need algorithm optuna or random)"
                )
        if self.selection.rule == "plateau":
            if self.selection.param is None:
                if len(self.search.space) != 1:
                    raise ValueError(
                        "selection.param: the plateau rule needs the ordered hyperparameter; "
                        f"set it to one of {sorted(self.search.space)}"
                    )
                object.__setattr__(self.selection, "param", next(iter(self.search.space)))
            elif self.selection.param not in self.search.space:
                raise ValueError(
                    f"selection.param {self.selection.param!r} is not searched"
                    f"{_suggest(self.selection.param, self.search.space)}; "
                    f"searched keys: {sorted(self.search.space)}"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The config as plain YAML-able data (the form saved with checkpoints and in MLflow)."""
        return self.model_dump(mode="json")

    def with_overrides(self, overrides: Mapping[str, Any]) -> SweeperConfig:
        """A new validated config with ``dotted.key: value`` pairs applied (a trial's config)."""
        return _validate(_apply(self.to_dict(), overrides))

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name


# Resources is referenced by SearchConfig before its definition.
SearchConfig.model_rebuild()


# --- loading -----------------------------------------------------------------------------------


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse ``--set`` arguments ``dotted.key=value``; values are read as YAML scalars/lists."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: write it as dotted.key=value")
        try:
            overrides[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({exc})") from None
    return overrides


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    data: Mapping[str, Any] | None = None,
) -> SweeperConfig:
    """Read a YAML config (or take ``data``), apply overrides and validate it.

    Raises :class:`ConfigError` with one line naming the key and the fix.
    """
    if data is None:
        if path is None:
            raise ConfigError("no config given: pass a YAML file, e.g. configs/quickstart.yaml")
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {str(file)!r} not found: check the path")
        try:
            data = yaml.safe_load(file.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{file}: not valid YAML{where}: fix the syntax") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{file}: the top level must be a mapping of keys (name:, data:, ...)")
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    config = _validate(_apply(copy.deepcopy(dict(data)), overrides))
    _check_search_values(config)
    return config


def _check_search_values(config: SweeperConfig) -> None:
    """Every value a trial can receive must make a valid config: a bad grid value (or range
    bound) fails here, not inside a trial hours into the sweep."""
    for key, spec in config.search.space.items():
        candidates = spec.values if spec.values is not None else [spec.low, spec.high]
        for value in candidates:
            if spec.integer and value is not None:
                value = int(value)
            try:
                _validate(_apply(config.to_dict(), {key: value}))
            except ConfigError as exc:
                raise ConfigError(f"search.space.{key}: value {value!r} is invalid ({exc})") from None


def _validate(data: dict[str, Any]) -> SweeperConfig:
    _check_unknown_keys(data, SweeperConfig, prefix="")
    try:
        return SweeperConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _apply(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"{dotted}: {part!r} is a value, not a section")
            node = child
        node[leaf] = value
    return data


def _check_unknown_keys(data: Any, model: type[BaseModel], *, prefix: str) -> None:
    if not isinstance(data, Mapping):
        return
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            where = f"{prefix}{key}"
            raise ConfigError(f"{where}: unknown key{_suggest(str(key), fields)}")
        annotation = fields[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _check_unknown_keys(value, annotation, prefix=f"{prefix}{key}.")


def _check_dotted_key(plain: dict[str, Any], dotted: str, *, where: str) -> None:
    node: Any = plain
    walked: list[str] = []
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            options = sorted(node) if isinstance(node, dict) else []
            hint = _suggest(part, options)
            prefix = ".".join(walked) or "the config"
            raise ValueError(f"{where}: {dotted!r} does not exist ({prefix} has no {part!r}{hint})")
        node = node[part]
        walked.append(part)
    if isinstance(node, dict):
        raise ValueError(f"{where}: {dotted!r} is a section, not a hyperparameter")


def _suggest(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "required key is missing: add it"
    elif error["type"].startswith(("literal_error", "enum")):
        message = f"{message} (got {error.get('input')!r})"
    elif "input" in error and error["type"] not in {"value_error", "assertion_error"}:
        message = f"{message} (got {error['input']!r})"
    return f"{loc}: {message}" if loc else message
