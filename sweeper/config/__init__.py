"""Typed, validated sweep configuration.

A config is a YAML file of the shape in DESIGN.md. :func:`load_config` reads it, applies
``--set dotted.key=value`` overrides and validates everything a sweep needs *before* anything
is written: unknown keys (with the closest valid key suggested), types, ranges, the components
(methods, backbones, data sets: built-in, plugin or import path, :mod:`sweeper.registry`) and
the method's hyperparameter names, the search space (each value typed as its hyperparameter), the selection
parameter, the objective (a metric the trials will report), and that no value is non-finite,
holds a control character or carries credentials in a URI. Relative paths (``data.root``, a
local ``storage_path``, sqlite/journal stores) are made absolute once, at load, so trial workers
and a later resume from another directory read the same files. Every problem surfaces as one
:class:`ConfigError` whose message names the key and what is wrong.

This package is layer 0: it imports neither torch nor ray, mlflow or optuna.
"""

from sweeper.config._data import IDX_DATASETS, DataConfig
from sweeper.config._load import load_config, parse_overrides, trial_config
from sweeper.config._sections import (
    CollapseConfig,
    ConfirmConfig,
    EvaluationConfig,
    MethodConfig,
    ModelConfig,
    ParamSpec,
    Resources,
    SearchConfig,
    SelectionConfig,
    TrackingConfig,
    TrainConfig,
)
from sweeper.config._sweep import SweeperConfig
from sweeper.config._types import LABEL_FREE_METRICS
from sweeper.errors import ConfigError

__all__ = [
    "ConfigError",
    "SweeperConfig",
    "load_config",
    "parse_overrides",
    "trial_config",
    "LABEL_FREE_METRICS",
    "IDX_DATASETS",
    "DataConfig",
    "MethodConfig",
    "ModelConfig",
    "TrainConfig",
    "CollapseConfig",
    "ConfirmConfig",
    "EvaluationConfig",
    "ParamSpec",
    "SearchConfig",
    "Resources",
    "SelectionConfig",
    "TrackingConfig",
]
