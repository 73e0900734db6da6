"""Resuming a finished sweep with a larger ``search.num_samples`` extends it: the finished trials
stay as they are, the new ones run, MLflow gets one child per trial under the same parent."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from sweeper.config import load_config
from sweeper.sweep import SweepError, run_sweep
from tests.helpers import child_runs, tiny_config_data

pytestmark = pytest.mark.usefixtures("ray_local")


def _result_rows(directory: Path) -> dict[str, list[dict]]:
    rows = {}
    for path in sorted(directory.glob("train_trial_*/result.json")):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows[lines[0]["trial_id"]] = [(row["epoch"], row["train/loss"]) for row in lines]
    return rows


def _data(tmp_path: Path, name: str, **search) -> dict:
    data = tiny_config_data(tmp_path, name=name)
    data["train"]["epochs"] = 1
    data["search"] |= {"space": {"method.params.cov_weight": {"values": [1.0, 8.0]}}, **search}
    return data


def _run_then_grow(data: dict, num_samples: int):
    """Run the sweep, then resume it with ``num_samples``; check the first trials were kept."""
    first = run_sweep(load_config(data=data), verbose=0)
    before = _result_rows(first.directory)
    assert len(before) == 2
    grown = load_config(data=data, overrides=[f"search.num_samples={num_samples}"])
    second = run_sweep(grown, resume=True, verbose=0)
    after = _result_rows(second.directory)
    assert len(after) == 4 and len(second.table) == 4
    assert {trial: after[trial] for trial in before} == before  # finished trials not retrained
    return first, second, grown, before


def test_grid_sweep_grows_by_repeats_with_new_seeds(tmp_path) -> None:
    data = _data(tmp_path, "grid-grow")
    first, second, grown, before = _run_then_grow(data, 2)
    new = second.table[~second.table["trial_id"].isin(before)]
    assert sorted(new["method.params.cov_weight"]) == [1.0, 8.0] and set(new["seed"]) == {1}
    assert set(second.table["status"]) == {"ok"}
    assert second.parent_run_id == first.parent_run_id
    children = child_runs(grown, first.parent_run_id)
    assert sorted(c.data.tags["sweeper.trial_id"] for c in children) == sorted(second.table["trial_id"])
    saved = yaml.safe_load((second.directory / "sweeper.yaml").read_text())
    assert saved["search"]["num_samples"] == 2

    with pytest.raises(SweepError, match=r"search.num_samples=1: it was started with 2 .* grow, not shrink"):
        run_sweep(load_config(data=data), resume=True, verbose=0)


def test_optuna_sweep_grows_and_its_study_continues(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    data = _data(tmp_path, "optuna-grow", algorithm="optuna", num_samples=2, storage=storage)
    data["search"]["space"] = {"method.params.cov_weight": {"low": 0.5, "high": 8.0, "log": True}}
    first, second, grown, _ = _run_then_grow(data, 4)
    study = optuna.load_study(study_name="optuna-grow", storage=storage)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}
    assert sorted(t.params["method.params.cov_weight"] for t in study.trials) == sorted(
        second.table["method.params.cov_weight"]
    )
    assert len(child_runs(grown, first.parent_run_id)) == 4
