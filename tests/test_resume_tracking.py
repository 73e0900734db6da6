"""Resuming a sweep with a new ``tracking.uri``: Tune restores the tracking callback it pickled
at the start (``tuner.pkl``, pointing at the old store); the resume must still send every
trial, the finished ones and those it runs now, to the new store, and leave the old one alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeper.config import load_config
from sweeper.sweep import SweepError, run_sweep
from sweeper.sweep import _tuner as tuner_module
from tests.helpers import tiny_config_data

pytestmark = pytest.mark.usefixtures("ray_local")
KEY = "method.params.cov_weight"


def _store(uri: str, experiment: str) -> dict[str, dict]:
    """``{run name: {"status", "tags", "params", "history": {metric: [(step, value)]}}}``."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found is not None else []
    return {
        run.info.run_name: {
            "id": run.info.run_id,
            "status": run.info.status,
            "tags": run.data.tags,
            "params": run.data.params,
            "history": {
                key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
                for key in run.data.metrics
            },
        }
        for run in runs
    }


def _reported(directory: Path) -> dict[str, list[dict]]:
    """Per trial, every result Ray Tune wrote to its result.json."""
    reported = {}
    for path in directory.glob("train_trial_*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        reported[rows[0]["trial_id"]] = rows
    return reported


def test_resume_with_a_new_tracking_uri_sends_every_trial_there(tmp_path) -> None:
    data = tiny_config_data(tmp_path, name="moved")
    data["search"]["space"] = {KEY: {"values": [1.0, 8.0]}}
    first = run_sweep(load_config(data=data), verbose=0)
    old_uri = data["tracking"]["uri"]
    old_before = _store(old_uri, "moved")
    assert len(old_before) == 3

    (tmp_path / "new").mkdir()
    new_uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    # A larger budget too: two trials run in this resume, two finished before it.
    moved = load_config(data=data, overrides=[f"tracking.uri={new_uri}", "search.num_samples=2"])
    second = run_sweep(moved, resume=True, verbose=0)
    assert len(second.table) == 4 and set(second.table["status"]) == {"ok"}

    assert _store(old_uri, "moved") == old_before  # nothing more went to the old store
    new = _store(new_uri, "moved")
    parent = new.pop("moved")
    assert parent["id"] == second.parent_run_id != first.parent_run_id and parent["status"] == "FINISHED"
    assert parent["tags"]["sweeper.pick"] == ",".join(second.report.headline[1].trial_ids)
    reported = _reported(second.directory)
    assert sorted(new) == sorted(reported) == sorted(second.table["trial_id"])
    for trial_id, child in new.items():
        rows = reported[trial_id]
        assert child["tags"]["mlflow.parentRunId"] == parent["id"] and child["status"] == "FINISHED"
        assert child["tags"]["sweeper.status"] == "ok"
        assert float(child["params"][KEY]) == rows[0]["config"][KEY]
        for key in ("train/loss", "rankme/embedding", "oracle/linear/digits"):
            expected = [(row["epoch"], pytest.approx(row[key])) for row in rows if key in row]
            assert child["history"][key] == expected, (trial_id, key)
    replayed = set(first.table["trial_id"])
    assert {trial for trial in new if "seed" in new[trial]["params"]} == set(new) - replayed  # the repeats
    saved = yaml.safe_load((second.directory / "sweeper.yaml").read_text())
    assert saved["tracking"]["uri"] == new_uri  # the next resume and `sweeper compare` log there too


def test_resume_with_a_new_tracking_uri_is_refused_when_the_callback_cannot_be_replaced(tmp_path, monkeypatch) -> None:
    data = tiny_config_data(tmp_path, name="client")
    data["search"]["space"] = {KEY: {"values": [1.0]}}
    data["train"]["epochs"] = 1
    run_sweep(load_config(data=data), verbose=0)
    saved_before = (tmp_path / "sweeps" / "client" / "sweeper.yaml").read_text()
    # A Ray Client Tuner runs remotely: the restored callback is out of reach.
    monkeypatch.setattr(tuner_module, "_use_on_resume", lambda *args, **kwargs: False)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    with pytest.raises(
        SweepError, match=r"cannot resume 'client' with tracking.uri=sqlite:///.*other.db: .*Ray Client"
    ):
        run_sweep(load_config(data=data, overrides=[f"tracking.uri={other}"]), resume=True, verbose=0)
    assert (tmp_path / "sweeps" / "client" / "sweeper.yaml").read_text() == saved_before
    # The same tracking.uri resumes with the restored callback, which logs where it always did.
    result = run_sweep(load_config(data=data), resume=True, verbose=0)
    assert list(result.table["status"]) == ["ok"]
