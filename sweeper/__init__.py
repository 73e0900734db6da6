"""sweeper: label-free hyperparameter sweeps for self-supervised pretraining.

Ray Tune schedules the trials, Optuna proposes hyperparameters, RankMe scores each trial
without labels, MLflow records everything. The command line is ``sweeper``; from Python:

    from sweeper import load_config, run_sweep, make_objective
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sweeper.config import ConfigError, SweeperConfig, load_config

__all__ = ["ConfigError", "SweeperConfig", "load_config", "make_objective", "run_sweep"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from sweeper.objective import make_objective
    from sweeper.sweep import run_sweep


def __getattr__(name: str) -> Any:
    # The orchestration stack (ray, optuna, mlflow) is imported only when asked for.
    if name == "run_sweep":
        from sweeper.sweep import run_sweep

        return run_sweep
    if name == "make_objective":
        from sweeper.objective import make_objective

        return make_objective
    raise AttributeError(f"module 'sweeper' has no attribute {name!r}")
