"""An Optuna objective on the same engine and search space as the Ray Tune path.

    study = optuna.create_study(direction="maximize")
    study.optimize(make_objective(config), n_trials=20)

Each call samples ``search.space`` with the shared define-by-run function
(:meth:`sweeper.config.SearchConfig.suggest`), pretrains with :class:`sweeper.engine.Trainer`,
reports the objective (RankMe of the embedding, clipped at the representation dimension) at
every evaluation epoch with ``trial.report`` so Optuna pruners can stop it, and returns the
final value. A diverged trial returns NaN, which Optuna records as a failed trial, so a
study never prefers a diverged configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from sweeper.config import SweeperConfig
from sweeper.data import DatasetSplits, load_dataset
from sweeper.engine import Trainer
from sweeper.names import RANKME_EMBEDDING, RANKME_REPRESENTATION, objective_value

__all__ = ["make_objective"]


def make_objective(config: SweeperConfig, *, data: DatasetSplits | None = None) -> Callable[[optuna.Trial], float]:
    """Return ``f(trial) -> float`` for ``optuna.Study.optimize``.

    Args:
        config: the sweep config; ``search.space`` defines what each trial samples.
        data: preloaded dataset shared by all trials (loaded once from the config if omitted).
    """
    shared = data if data is not None else load_dataset(config.data)

    def objective(trial: optuna.Trial) -> float:
        params = config.search.suggest(trial)
        trial_config = config.with_overrides(params)
        trainer = Trainer(trial_config, data=shared)
        latest: dict[str, Any] = {}
        for result in trainer.epochs():
            latest |= result.metrics
            trial.set_user_attr("status", result.status)
            if result.evaluated and not result.done:
                trial.report(objective_value(trial_config.search.objective, latest), step=result.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        for key in (RANKME_EMBEDDING, RANKME_REPRESENTATION):
            if key in latest:
                trial.set_user_attr(key, float(latest[key]))
        return objective_value(trial_config.search.objective, latest)

    return objective
