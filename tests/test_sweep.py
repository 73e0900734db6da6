"""End to end: a real Ray Tune sweep on digits, recorded in MLflow, with selection."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from sweeper.config import load_config
from sweeper.sweep import SweepError, run_sweep
from sweeper.sweep._callback import TrackingCallback
from sweeper.tracking import SweepTracker
from tests.helpers import tiny_config_data

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sweep")
    config = load_config(data=tiny_config_data(tmp_path))
    return config, run_sweep(config, verbose=0)


def test_trials_csv_follows_the_contract(finished) -> None:
    config, result = finished
    table = pd.read_csv(result.directory / "trials.csv")
    assert result.directory == (config.storage_path and result.directory)
    assert list(table["method.params.cov_weight"]) == [0.0, 1.0, 8.0]
    for column in (
        "trial_id",
        "rankme/embedding",
        "rankme/representation",
        "oracle/linear/digits",
        "oracle/knn/digits",
        "status",
        "epochs_done",
        "wall_s",
    ):
        assert column in table.columns, column
    assert set(table["status"]) == {"ok"}
    assert set(table["epochs_done"]) == {2}
    assert table["rankme/embedding"].between(1, 16).all()


def test_mlflow_has_one_parent_and_a_finished_child_per_trial(finished) -> None:
    config, result = finished
    client = MlflowClient(config.tracking.uri)
    experiment = client.get_experiment_by_name(config.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(parents) == 1 and parents[0].info.run_id == result.parent_run_id
    assert parents[0].info.run_name == config.name
    assert len(children) == len(runs) - 1 == 3
    table = result.table.set_index("trial_id")
    for child in children:
        assert child.info.status == "FINISHED"
        trial_id = child.data.tags["sweeper.trial_id"]
        history = client.get_metric_history(child.info.run_id, "rankme/embedding")
        assert [m.step for m in history] == [1, 2]  # one point per evaluation epoch, no duplicates
        assert history[-1].value == pytest.approx(table.loc[trial_id, "rankme/embedding"])
        assert "oracle/linear/digits" in child.data.metrics
        assert float(child.data.params["method.params.cov_weight"]) == table.loc[trial_id, "method.params.cov_weight"]
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "report")}
    assert {"report/trials.csv", "report/report.md", "report/rankme_vs_param.png"} <= artifacts
    picked = [c for c in children if "sweeper.selected_by" in c.data.tags]
    assert picked, "the picked trials are tagged"
    # The headline: what selection.rule (plateau) picked, on the parent and in the result.
    rule, headline = result.report.headline
    assert rule == "rankme/plateau" and headline is not None
    assert headline.trial_ids == result.picks["rankme/plateau"].trial_ids
    assert parents[0].data.tags["sweeper.pick"] == ",".join(headline.trial_ids)
    assert parents[0].data.tags["sweeper.pick_rule"] == "rankme/plateau"
    assert result.report.table is result.table and result.report.directory == result.directory


def test_picks_follow_the_rules(finished) -> None:
    config, result = finished
    table = result.table
    best = table["rankme/embedding_clipped"].max()
    plateau = result.picks["rankme/plateau"]
    on_plateau = table[table["rankme/embedding_clipped"] >= (1 - config.selection.tolerance) * best]
    assert plateau.params["method.params.cov_weight"] == on_plateau["method.params.cov_weight"].min()
    oracle = result.picks["oracle/linear"]
    assert oracle.value == table["oracle/linear/digits"].max()
    report = (result.directory / "report.md").read_text()
    assert "RankMe plateau" in report and "oracle" in report


def test_existing_sweep_name_is_refused_before_anything_is_written(finished) -> None:
    config, result = finished
    client = MlflowClient(config.tracking.uri)
    before = len(client.search_runs([client.get_experiment_by_name(config.experiment_name).experiment_id]))
    mtime = (result.directory / "trials.csv").stat().st_mtime
    with pytest.raises(SweepError, match="already exists.*--resume"):
        run_sweep(config, verbose=0)
    after = len(client.search_runs([client.get_experiment_by_name(config.experiment_name).experiment_id]))
    assert before == after
    assert (result.directory / "trials.csv").stat().st_mtime == mtime
    assert math.isfinite(result.picks["rankme/max"].value)


def test_asha_on_rankme_stops_the_low_rank_trials(tmp_path) -> None:
    data = tiny_config_data(tmp_path, name="asha")
    # One trial at a time, highest covariance weight (highest rank) first: ASHA is asynchronous
    # (the first trial at a rung always continues), so this order makes its decisions repeatable.
    data["search"] |= {
        "space": {"method.params.cov_weight": {"values": [8.0, 1.0, 0.01, 0.0]}},
        "scheduler": "asha",
        "grace_period": 1,
        "reduction_factor": 2,
        "max_concurrent": 1,
    }
    data["train"]["epochs"] = 4
    result = run_sweep(load_config(data=data), verbose=0)
    table = result.table.set_index("method.params.cov_weight")
    stopped = table[table["status"] == "stopped"]
    assert len(stopped) >= 1 and (stopped["epochs_done"] < 4).all()
    assert (table.loc[table["status"] == "ok", "epochs_done"] == 4).all()
    # The highest-rank trial is never the one stopped, and stopped trials are never picked.
    best = table["rankme/embedding"].idxmax()
    assert table.loc[best, "status"] == "ok"
    picked = {tid for pick in result.picks.values() for tid in pick.trial_ids}
    assert not picked & set(stopped["trial_id"])


def test_tracking_callback_maps_tune_events_to_child_runs(tmp_path) -> None:
    from types import SimpleNamespace

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri=uri, experiment="e", sweep="s")
    tracker.start_parent({"name": "s"})
    callback = TrackingCallback(tracker, ["x"])
    # Stopped by a scheduler: Tune terminates it while its last result still says "running".
    stopped = SimpleNamespace(
        trial_id="t1", config={"x": 1.0, "seed": 2, "other": 3}, last_result={"status": "running"}
    )
    callback.on_trial_start(0, [], stopped)
    result = {"epoch": 1, "train/loss": 0.5, "status": "running", "config": {"x": 1.0}, "time_total_s": 1.0}
    callback.on_trial_result(0, [], stopped, result)
    callback.on_trial_complete(0, [], stopped)
    errored = SimpleNamespace(
        trial_id="t2",
        config={"x": 2.0},
        last_result={"status": "running", "epoch": 1},
        pickled_error_file=None,
        get_pickled_error=lambda: RuntimeError("boom: the loader died\ntraceback ..."),
    )
    callback.on_trial_start(0, [], errored)
    callback.on_trial_error(0, [], errored)
    callback.on_experiment_end([])
    assert callback.outbox.pending == 0

    client = MlflowClient(uri)
    runs = {tid: client.get_run(run_id) for tid, run_id in tracker.child_ids().items()}
    assert runs["t1"].data.params == {"x": "1.0", "seed": "2"}
    assert runs["t1"].data.tags["sweeper.status"] == "stopped" and runs["t1"].info.status == "FINISHED"
    assert runs["t1"].data.metrics == {"train/loss": 0.5}
    assert runs["t2"].data.tags["sweeper.status"] == "failed" and runs["t2"].info.status == "FAILED"
    assert runs["t2"].data.tags["sweeper.error"] == "RuntimeError: boom: the loader died"


def test_tracking_callback_waits_for_the_parent_run_and_surfaces_its_failure(tmp_path) -> None:
    import pickle
    from concurrent.futures import Future

    from sweeper.sweep import _TrackingCallback

    assert _TrackingCallback is TrackingCallback  # the name pickled in sweeps started before the split
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    failed: Future = Future()
    failed.set_exception(RuntimeError("tracking store refused the parent run"))
    callback = TrackingCallback(SweepTracker(uri=uri, experiment="e", sweep="s"), ["x"], parent=failed)
    assert pickle.loads(pickle.dumps(callback)).outbox._wait_for is None  # never pickled with Tune's state
    with pytest.raises(RuntimeError, match="refused the parent run"):
        callback.on_trial_complete(0, [], type("Trial", (), {"trial_id": "t1", "last_result": {}})())
