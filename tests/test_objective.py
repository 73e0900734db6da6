"""The plain-Optuna objective gives the values Ray Tune's sweep gives for the same configs."""

from __future__ import annotations

import math

import optuna
import pytest
import torch

from sweeper.config import load_config
from sweeper.objective import make_objective
from sweeper.sweep import run_sweep
from tests.helpers import tiny_config_data

pytestmark = pytest.mark.usefixtures("ray_local")


def test_optuna_study_matches_the_ray_sweep(tmp_path) -> None:
    config = load_config(data=tiny_config_data(tmp_path, name="objective"))
    swept = run_sweep(config, verbose=0).table.set_index("method.params.cov_weight")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray trial with resources.cpu = 1
    try:
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
        study.optimize(make_objective(config), n_trials=3)
    finally:
        torch.set_num_threads(threads)
    assert len(study.trials) == 3
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        cov = trial.params["method.params.cov_weight"]
        expected = min(swept.loc[cov, "rankme/embedding"], 128.0)
        assert trial.value == pytest.approx(expected, rel=0.01)
        assert math.isfinite(trial.user_attrs["rankme/representation"])
        # Intermediate values are reported at each evaluation epoch (for pruners).
        assert list(trial.intermediate_values) == [1]


def test_objective_works_with_a_fixed_trial(tmp_path) -> None:
    config = load_config(data=tiny_config_data(tmp_path, name="fixed"))
    value = make_objective(config)(optuna.trial.FixedTrial({"method.params.cov_weight": 1.0}))
    assert 1.0 <= value <= 16.0
