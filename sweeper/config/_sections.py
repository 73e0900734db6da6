"""The sections of a config besides ``data``: method, model, train, evaluation, search (with
its parameter specs and per-trial resources), selection and tracking."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sweeper.config._checks import located, suggest
from sweeper.config._data import DataConfig
from sweeper.config._paths import absolute_path, absolute_sqlite
from sweeper.config._types import (
    BackboneName,
    LabelFreeName,
    MethodName,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Strict,
)
from sweeper.hyperparams import METHOD_PARAMS
from sweeper.names import RANKME_EMBEDDING, RANKME_PROTOTYPES, RANKME_REPRESENTATION


class MethodConfig(Strict):
    name: MethodName = "vicreg"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _typed_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """The method's hyperparameters typed by its model (errors located at
        ``method.params.<name>``), every float finite."""
        name = info.data.get("name")
        if name is None:  # the name itself is wrong; that error is reported
            return params
        model = METHOD_PARAMS.get(name)
        if model is None:
            raise ValueError(f"method {name!r} is not implemented yet; available: {sorted(METHOD_PARAMS)}")
        unknown = sorted(set(params) - set(model.model_fields))
        if unknown:
            raise located(
                (unknown[0],),
                f"{name} has no hyperparameter {unknown[0]!r}{suggest(unknown[0], model.model_fields)}; "
                f"it has {sorted(model.model_fields)}",
            )
        typed = model.model_validate(params).model_dump()
        for key, value in typed.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise located((key,), f"Input should be a finite number (got {value})")
        return typed


class ModelConfig(Strict):
    backbone: BackboneName = "small_cnn"
    projector: Annotated[list[PositiveInt], Field(min_length=1)] = Field(default_factory=lambda: [256, 128])
    cifar_stem: bool | None = None  # ResNets: 3x3 stem without max-pool; None = auto (image_size <= 64)


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
