"""The sections of a config besides ``data``: method, model, train, evaluation, search (with
its parameter specs and per-trial resources), selection and tracking."""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sweeper import registry
from sweeper.config._checks import located, suggest
from sweeper.config._data import DataConfig
from sweeper.config._paths import AbsolutePath, absolute_path, absolute_sqlite
from sweeper.config._types import (
    LabelFreeName,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Strict,
    resolving,
    search_dirs,
)
from sweeper.errors import ConfigError
from sweeper.names import RANKME_EMBEDDING, RANKME_PROTOTYPES, RANKME_REPRESENTATION


def resolved_name(kind: registry.Kind, name: str, info: ValidationInfo) -> str:
    """``name`` as its canonical target (:func:`sweeper.registry.resolve`) when this validation
    resolves components; as given otherwise (a saved sweep's names are canonical already)."""
    if not resolving(info):
        return name
    try:
        return registry.resolve(kind, name, search_dirs=search_dirs(info)).target
    except ConfigError as exc:
        # The message names the key already: the located error keeps it as it is.
        raise located((), str(exc).partition(": ")[2]) from None


class MethodConfig(Strict):
    """``name``: a built-in method, a registered name, an entry point or ``module:Class``;
    ``params``: its hyperparameters, validated by the method's pydantic model."""

    name: str = "vicreg"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_method(cls, name: str, info: ValidationInfo) -> str:
        return resolved_name("method", name, info)

    @field_validator("params")
    @classmethod
    def _typed_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """The method's hyperparameters typed by its model (errors located at
        ``method.params.<name>``), every float finite. A saved sweep read without resolving
        keeps the params it saved (typed when it was started)."""
        name = info.data.get("name")
        if name is None:  # the name itself is wrong; that error is reported
            return params
        if not resolving(info) and not registry.is_builtin("method", name):
            return _finite(params)
        try:
            model = registry.method_params(name, search_dirs=search_dirs(info))
        except ConfigError as exc:
            raise located((), str(exc).partition(": ")[2]) from None
        unknown = sorted(set(params) - set(model.model_fields))
        if unknown:
            raise located(
                (unknown[0],),
                f"{name} has no hyperparameter {unknown[0]!r}{suggest(unknown[0], model.model_fields)}; "
                f"it has {sorted(model.model_fields)}",
            )
        return _finite(model.model_validate(params).model_dump())


def _finite(params: dict[str, Any]) -> dict[str, Any]:
    for key, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise located((key,), f"Input should be a finite number (got {value})")
    return params


class ModelConfig(Strict):
    """``backbone``: a built-in, ``timm/<name>``, ``torchvision/<name>``, a registered name, an
    entry point or ``module:factory``; ``backbone_args`` go to its factory; ``pretrained``: a
    local weights file loaded into it (nothing is downloaded)."""

    backbone: str = "small_cnn"
    backbone_args: dict[str, Any] = Field(default_factory=dict)
    pretrained: AbsolutePath | None = None
    projector: Annotated[list[PositiveInt], Field(min_length=1)] = Field(default_factory=lambda: [256, 128])
    cifar_stem: bool | None = None  # ResNets: 3x3 stem without max-pool; None = auto (image_size <= 64)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str, info: ValidationInfo) -> str:
        target = resolved_name("backbone", name, info)
        if resolving(info) and target.startswith("timm/"):
            check_timm_model(target.removeprefix("timm/"))
        elif resolving(info) and target.startswith("torchvision/"):
            check_torchvision_model(target.removeprefix("torchvision/"))
        return target

    @field_validator("backbone_args")
    @classmethod
    def _no_downloads(cls, args: dict[str, Any]) -> dict[str, Any]:
        for key in ("pretrained", "weights", "weights_backbone"):  # timm's and torchvision's
            if args.get(key) not in (None, False):
                raise ValueError(
                    f"pretrained weights are never downloaded: remove backbone_args.{key} and set "
                    "model.pretrained to a local weights file"
                )
        return args

    @field_validator("pretrained")
    @classmethod
    def _weights_file(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is not None and resolving(info) and not path.is_file():
            raise ValueError(
                f"weights file {str(path)!r} does not exist: point model.pretrained at a local file "
                "(nothing is downloaded)"
            )
        return path


def check_timm_model(name: str) -> None:
    """timm must be installed and know ``name`` (closest names suggested)."""
    try:
        import timm
    except ImportError:
        raise ValueError(
            f'timm/{name} needs timm, which is not installed: pip install "sweeper[timm]" (or pip install timm)'
        ) from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(f'timm/{c}') for c in close)}?)" if close else ""
        raise ValueError(f"timm has no model {name!r}{hint}: see timm.list_models()")


def check_torchvision_model(name: str) -> None:
    """``name`` must be one of torchvision's classification models (closest names suggested):
    its detection, segmentation, video, optical-flow and quantized models are no image
    backbones, and their builders download ImageNet weights for their trunk by default."""
    from torchvision import models  # torch is imported only when a config names torchvision/

    classifiers = models.list_models(module=models)
    if name in classifiers:
        return
    if name in models.list_models():
        raise ValueError(
            f"torchvision/{name} is not a classification model: a backbone is one of "
            "torchvision.models.list_models(module=torchvision.models)"
        )
    close = difflib.get_close_matches(name, classifiers, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(repr(f'torchvision/{c}') for c in close)}?)" if close else ""
    raise ValueError(
        f"torchvision has no model {name!r}{hint}: see torchvision.models.list_models(module=torchvision.models)"
    )


class TrainConfig(Strict):
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
    channels_last: bool = True  # CUDA tensor cores; oneDNN on CPU skips the NCHW reorders


class CollapseConfig(Strict):
    """Abort a trial whose embedding RankMe stays below ``max(fraction · K, floor)`` (K: the
    embedding dimension) for ``patience`` consecutive evaluations: ``status=collapsed``."""

    fraction: Annotated[float, Field(ge=0, lt=1)] = 0.02
    floor: Annotated[float, Field(ge=1)] = 1.5
    patience: PositiveInt = 2


class EvaluationConfig(Strict):
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


class ParamSpec(Strict):
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


class Resources(Strict):
    """Per trial; with ``workers`` > 1, per worker of the trial's data-parallel group (Ray Train)."""

    workers: PositiveInt = 1
    cpu: PositiveFloat = 1.0
    gpu: NonNegativeFloat = 0.0


class ConfirmConfig(Strict):
    """Confirmation of the top trials: after the search, the ``top_k`` configurations the
    headline rule (``selection.rule``) ranks first are trained again with ``seeds`` new seeds
    each, and the pick is decided on the seed means."""

    top_k: PositiveInt = 2
    seeds: PositiveInt = 2


class SearchConfig(Strict):
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
    # Off by default; a resume (or `sweeper confirm`) may set it on a finished sweep.
    confirm: ConfirmConfig | None = None

    @field_validator("storage")
    @classmethod
    def _known_storage(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value.startswith("journal:"):
            return "journal:" + str(absolute_path(Path(value.removeprefix("journal:"))))
        if "://" in value:
            return absolute_sqlite(value)
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
        # Whether this config's trials report it is checked with the whole config (SweeperConfig).
        if value in {RANKME_EMBEDDING, RANKME_REPRESENTATION, RANKME_PROTOTYPES} or value.startswith(
            ("oracle/", "label_free/")
        ):
            return value
        raise ValueError(
            f"unknown objective {value!r}: use rankme/embedding, rankme/representation, rankme/prototypes, "
            "label_free/<name> or oracle/<probe>/<dataset>"
        )


class SelectionConfig(Strict):
    # The headline rule (SweepReport.headline); every report shows all of them side by side.
    rule: Literal["max", "plateau", "rank_gate", "noise_plateau", "consensus"] = "plateau"
    param: str | None = None
    tolerance: Annotated[float, Field(gt=0, lt=1)] = 0.01
    order: Literal["ascending", "descending"] = "ascending"


class TrackingConfig(Strict):
    uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None

    @field_validator("uri")
    @classmethod
    def _absolute_store(cls, value: str) -> str:
        # Credentials in the URI are refused for every URI of the config (SweeperConfig).
        return absolute_sqlite(value)
