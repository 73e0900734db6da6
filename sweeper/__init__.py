"""sweeper: label-free hyperparameter sweeps for self-supervised pretraining.

Ray Tune schedules the trials, Optuna proposes hyperparameters, RankMe scores each trial
without labels, MLflow records everything. The command line is ``sweeper``; from Python:

    from sweeper import load_config, run_sweep, make_objective

Your own components join by the same door as the built-ins (README, "Bring your own"): a
method is a subclass of :class:`SSLMethod` whose ``hyperparameters`` are a
:class:`MethodParams` model; :func:`register_method`, :func:`register_backbone` and
:func:`register_dataset` name them for a config's ``plugins:``; ``sweeper.testing.check_method``
checks a method keeps the contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sweeper.config import ConfigError, SweeperConfig, load_config
from sweeper.hyperparams import MethodParams
from sweeper.registry import register_backbone, register_dataset, register_method

__all__ = [
    "ConfigError",
    "MethodParams",
    "SSLMethod",
    "SweeperConfig",
    "load_config",
    "make_objective",
    "register_backbone",
    "register_dataset",
    "register_method",
    "run_sweep",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from sweeper.methods.base import SSLMethod
    from sweeper.objective import make_objective
    from sweeper.sweep import run_sweep


def __getattr__(name: str) -> Any:
    # torch and the orchestration stack (ray, optuna, mlflow) are imported only when asked for.
    if name == "SSLMethod":
        from sweeper.methods.base import SSLMethod

        return SSLMethod
    if name == "run_sweep":
        from sweeper.sweep import run_sweep

        return run_sweep
    if name == "make_objective":
        from sweeper.objective import make_objective

        return make_objective
    raise AttributeError(f"module 'sweeper' has no attribute {name!r}")
