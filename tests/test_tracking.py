"""MLflow tracking against a real sqlite store: parent and child runs, each (key, step) once,
the in-order retry outbox, parent lookup by name, redaction of secrets."""

from __future__ import annotations

import json
import pickle
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweeper.tracking import (
    ERROR_TAG,
    PARENT_TAG,
    STATUS_TAG,
    TRIAL_TAG,
    SweepTracker,
    TrackingError,
    TrackingOutbox,
    check_tracking_uri,
    flatten,
    redact,
)


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """One sqlite store for the module (creating its schema takes seconds); each test uses its
    own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _tracker(uri: str, experiment: str, sweep: str = "sweep") -> SweepTracker:
    return SweepTracker(uri=uri, experiment=experiment, sweep=sweep)


def _runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_one_parent_and_one_child_run_per_trial(uri) -> None:
    tracker = _tracker(uri, "children")
    parent = tracker.start_parent({"name": "sweep", "search": {"space": {"x": {"values": [1, 2]}}}, "seed": 3})
    first = tracker.child("t1", {"x": 1})
    assert tracker.child("t1", {"x": 1}) == first  # the same trial, the same run
    second = tracker.child("t2", {"x": 2})
    assert tracker.child_ids() == {"t1": first, "t2": second}

    runs = {run.info.run_id: run for run in _runs(uri, "children")}
    assert set(runs) == {parent, first, second}
    assert runs[parent].data.params == {"name": "sweep", "seed": "3"}  # the search space is not a param
    for run_id, trial, x in ((first, "t1", "1"), (second, "t2", "2")):
        tags = runs[run_id].data.tags
        assert tags[PARENT_TAG] == parent and tags[TRIAL_TAG] == trial and runs[run_id].info.run_name == trial
        assert runs[run_id].data.params == {"x": x}

    # A resumed sweep (a new tracker) finds the parent and the children instead of making new ones.
    resumed = _tracker(uri, "children")
    assert resumed.start_parent({"name": "sweep"}) == parent
    assert resumed.child("t2", {"x": 2}) == second
    assert len(_runs(uri, "children")) == 3


def test_each_key_and_step_is_logged_once_even_when_retried(uri) -> None:
    tracker = _tracker(uri, "steps")
    tracker.start_parent({"name": "sweep"})
    run_id = tracker.child("t1", {})
    assert tracker.log_result("t1", {"train/loss": 2.0, "epoch": 1, "status": "running"}, step=1) == 1
    assert tracker.log_result("t1", {"train/loss": 2.5}, step=1) == 0  # the retried write
    assert tracker.log_metrics("t1", {"train/loss": 1.5, "rankme/embedding": 7.0}, step=2) == 2
    # A resumed driver replays epochs 2 and 3: only epoch 3 is new.
    resumed = _tracker(uri, "steps")
    resumed.start_parent({"name": "sweep"})
    assert resumed.log_result("t1", {"train/loss": 9.0, "rankme/embedding": 9.0}, step=2) == 0
    assert resumed.log_result("t1", {"train/loss": 1.0, "spectrum/embedding": [3.0, 1.0]}, step=3) == 1

    client = MlflowClient(uri)
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.5), (3, 1.0)]
    assert [m.step for m in client.get_metric_history(run_id, "rankme/embedding")] == [2]
    assert set(client.get_run(run_id).data.metrics) == {"train/loss", "rankme/embedding"}


def test_finishing_a_trial_records_its_status_and_error(uri) -> None:
    tracker = _tracker(uri, "finish")
    tracker.start_parent({"name": "sweep"})
    ok, failed = tracker.child("ok", {}), tracker.child("bad", {})
    tracker.finish_trial("ok", status="ok")
    tracker.finish_trial("bad", status="failed", error="TrialOutOfMemoryError: trial ran out of CPU memory")
    tracker.finish_trial("never-started", status="ok")  # no run: nothing to finish, no error
    client = MlflowClient(uri)
    assert client.get_run(ok).info.status == "FINISHED" and client.get_run(ok).data.tags[STATUS_TAG] == "ok"
    bad = client.get_run(failed)
    assert bad.info.status == "FAILED" and bad.data.tags[STATUS_TAG] == "failed"
    assert bad.data.tags[ERROR_TAG].startswith("TrialOutOfMemoryError")
    assert ERROR_TAG not in client.get_run(ok).data.tags
    assert tracker.finished_trials() == {"ok", "bad"}
    assert len(_runs(uri, "finish")) == 3


def test_parent_is_found_by_sweep_name(uri) -> None:
    assert _tracker(uri, "no-such-experiment").find_parent() is None
    assert MlflowClient(uri).get_experiment_by_name("no-such-experiment") is None  # looking creates nothing
    made = _tracker(uri, "lookup", sweep="a")
    made.start_parent({"name": "a"})
    other = _tracker(uri, "lookup", sweep="b")
    assert other.find_parent() is None
    other.start_parent({"name": "b"})
    assert other.parent_id != made.parent_id

    # A tracker pickled (with Tune's state) before its parent existed finds it by name when it
    # makes its first child run; the pickle carries no client and no cached runs.
    restored = pickle.loads(pickle.dumps(_tracker(uri, "lookup", sweep="a")))
    assert restored.parent_id is None and restored._client is None
    restored.child("t1", {})
    assert restored.parent_id == made.parent_id
    assert pickle.loads(pickle.dumps(restored))._children == {}
    with pytest.raises(TrackingError, match="start_parent"):
        _tracker(uri, "lookup", sweep="c").child("t1", {})


def test_secrets_never_reach_params_or_the_config_artifact(uri, tmp_path) -> None:
    secret = "postgresql://optuna:hunter2@db:5432/optuna"
    tracker = _tracker(uri, "redaction")
    parent = tracker.start_parent({"name": "sweep", "search": {"storage": secret, "urls": [secret]}})
    client = MlflowClient(uri)
    params = client.get_run(parent).data.params
    redacted = redact(secret)
    assert "hunter2" not in redacted and redacted.startswith("postgresql://") and "***@db:5432/optuna" in redacted
    assert params["search.storage"] == redacted and json.loads(params["search.urls"]) == [redacted]
    config = Path(client.download_artifacts(parent, "config.json", str(tmp_path)))
    assert json.loads(config.read_text())["search"] == {"storage": redacted, "urls": [redacted]}
    assert redact("http://host:5000") == "http://host:5000" and redact(3) == 3


def test_selection_tags_replace_the_earlier_ones(uri) -> None:
    tracker = _tracker(uri, "tags")
    parent = tracker.start_parent({"name": "sweep"})
    for trial in ("t1", "t2", "t3"):
        tracker.child(trial, {})
    tracker.set_parent_tags({"sweeper.pick.a": "t1", "sweeper.pick.b": "t2"})
    tracker.tag_children("sweeper.selected_by", {"t1": "a", "t2": "b"})
    tracker.set_parent_tags({"sweeper.pick.a": "t3"}, replace_prefix="sweeper.pick.")
    tracker.tag_children("sweeper.selected_by", {"t3": "a"})
    client = MlflowClient(uri)
    tags = client.get_run(parent).data.tags
    assert {k: v for k, v in tags.items() if k.startswith("sweeper.pick.")} == {"sweeper.pick.a": "t3"}
    selected = {t: client.get_run(r).data.tags.get("sweeper.selected_by") for t, r in tracker.child_ids().items()}
    assert selected == {"t1": None, "t2": None, "t3": "a"}


class _FlakyStore:
    """Records writes; a write fails while ``down`` (as an unreachable server's would)."""

    def __init__(self) -> None:
        self.down = False
        self.landed: list[str] = []

    def write(self, name: str) -> None:
        if self.down:
            raise ConnectionError("tracking server unreachable")
        self.landed.append(name)


def test_outbox_keeps_the_order_and_retries_after_a_failure() -> None:
    store = _FlakyStore()
    outbox = TrackingOutbox(retry_every_s=0.0)
    assert outbox.put(store.write, "a") and store.landed == ["a"]
    store.down = True
    assert not outbox.put(store.write, "b") and not outbox.put(store.write, "c")
    assert store.landed == ["a"] and outbox.pending == 2 and outbox.failures == 2
    store.down = False
    assert outbox.put(store.write, "d")
    assert store.landed == ["a", "b", "c", "d"] and outbox.pending == 0


def test_outbox_waits_between_retries_and_until_the_deadline() -> None:
    store = _FlakyStore()
    outbox = TrackingOutbox(retry_every_s=60.0)
    store.down = True
    assert not outbox.put(store.write, "a")
    store.down = False
    assert not outbox.put(store.write, "b")  # within the retry interval: not tried again yet
    assert store.landed == [] and outbox.failures == 1 and outbox.pending == 2
    assert outbox.flush(wait_s=1.0)  # the end of a sweep: try now
    assert store.landed == ["a", "b"]

    patient = TrackingOutbox(retry_every_s=0.05)
    store.down = True
    patient.put(store.write, "c")
    started = time.monotonic()
    assert not patient.flush(wait_s=0.2)  # the server stays down: retries, gives up at the deadline
    assert 0.1 <= time.monotonic() - started < 1.0
    assert patient.failures >= 3 and patient.pending == 1 and store.landed == ["a", "b"]


def test_outbox_waits_for_the_parent_run_and_raises_its_failure() -> None:
    store = _FlakyStore()
    made: Future = Future()
    outbox = TrackingOutbox(wait_for=made, retry_every_s=0.0)
    made.set_result("parent-id")
    assert outbox.put(store.write, "a") and store.landed == ["a"]

    failed: Future = Future()
    failed.set_exception(RuntimeError("tracking store refused the parent run"))
    doomed = TrackingOutbox(wait_for=failed)
    with pytest.raises(RuntimeError, match="refused the parent run"):
        doomed.put(store.write, "b")
    assert store.landed == ["a"]


def test_outbox_pickles_without_its_queue_or_future() -> None:
    store = _FlakyStore()
    store.down = True
    outbox = TrackingOutbox(wait_for=None, retry_every_s=0.0)
    outbox.put(store.write, "a")
    outbox._wait_for = Future()
    copy = pickle.loads(pickle.dumps(outbox))
    assert copy.pending == 0 and copy._wait_for is None and outbox.pending == 1


def test_tracking_uri_checks_and_flatten(tmp_path) -> None:
    check_tracking_uri(f"sqlite:///{tmp_path / 'ok.db'}")
    with pytest.raises(TrackingError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    with pytest.raises(TrackingError, match="file store is retired"):
        check_tracking_uri(str(tmp_path / "mlruns"))
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
