"""MLflow tracking: the only module that imports mlflow.

One experiment per config, one **parent run** per sweep (run name = sweep name, tag
``sweeper.sweep``), one **child run** per trial (tags ``mlflow.parentRunId`` and
``sweeper.trial_id``). Runs are looked up by those tags before being created, so a resumed
sweep or trial logs into its existing run; metric points are logged once per (key, step),
so replayed epochs after a resume are not logged twice.

Everything goes through :class:`mlflow.tracking.MlflowClient` with explicit run ids (no
global active run), from the sweep driver only: trials never talk to the tracking server.
The driver queues its writes in a :class:`TrackingOutbox`, which runs them in order and keeps
the rest queued while the tracking server is down, so that an outage never blocks the trials.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from sweeper.errors import TrackingError
from sweeper.names import FAILED, is_metric_key

__all__ = ["SweepTracker", "TrackingError", "TrackingOutbox", "check_tracking_uri", "flatten", "redact"]

_log = logging.getLogger(__name__)

SWEEP_TAG = "sweeper.sweep"
TRIAL_TAG = "sweeper.trial_id"
STATUS_TAG = "sweeper.status"
ERROR_TAG = "sweeper.error"
CONFIRM_TAG = "sweeper.confirm"  # "true" on a confirmation trial's run (search.confirm)
PARENT_TAG = "mlflow.parentRunId"
_MAX_PARAM_LENGTH = 6000
# The SQL stores MLflow's tracking server code runs on (SQLAlchemy dialects).
_TRACKING_DATABASES = {"sqlite", "postgresql", "postgres", "mysql", "mssql"}


def check_tracking_uri(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast, before anything is written, if ``uri`` cannot hold the sweep's records: an
    ``http(s)://`` server must answer ``/health``; a database URL must be usable
    (:func:`sweeper.storage.check_database_url`: an sqlite file opened read-only, its directory
    writable; a server accepting a connection within ``timeout``); any other scheme, MLflow's
    retired file store and an in-memory database are refused."""
    from sweeper.storage import StorageError, check_database_url, redact_credentials

    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme in {"http", "https"}:
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                if response.status >= 400:
                    raise TrackingError(f"tracking.uri {uri}: server answered HTTP {response.status}")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"tracking.uri {uri} is unreachable ({reason}): start the MLflow server or fix tracking.uri"
            ) from None
    elif scheme in {"", "file"}:
        raise TrackingError(
            f"tracking.uri {uri!r}: MLflow's file store is retired; use sqlite:///mlflow.db or an http:// server"
        )
    elif scheme in _TRACKING_DATABASES:
        try:
            check_database_url(uri, key="tracking.uri", timeout=timeout)
        except StorageError as exc:
            raise TrackingError(str(exc)) from None
    elif scheme not in {"databricks", "databricks-uc"}:
        raise TrackingError(
            f"tracking.uri {redact_credentials(uri)!r}: MLflow cannot track to {scheme}://; use sqlite:///mlflow.db, "
            "an http(s):// MLflow server or a database (postgresql://, mysql://, mssql://)"
        )


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


class SweepTracker:
    """Parent and child runs of one sweep in one MLflow experiment."""

    def __init__(self, *, uri: str, experiment: str, sweep: str) -> None:
        self.uri = uri
        self.experiment = experiment
        self.sweep = sweep
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self.parent_id: str | None = None
        self._children: dict[str, str] = {}
        self._logged_steps: dict[str, dict[str, int]] = {}

    # Pickled into Ray Tune's experiment state with the callback: drop the live client.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_logged_steps": {}, "_children": {}}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            self._experiment_id = (
                found.experiment_id if found is not None else self.client.create_experiment(self.experiment)
            )
        return self._experiment_id

    # --- parent ------------------------------------------------------------------------------

    def find_parent(self) -> str | None:
        """The sweep's existing parent run id, if any (without creating the experiment)."""
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            return None
        runs = self.client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`{SWEEP_TAG}` = '{self.sweep}' and attributes.run_name = '{self.sweep}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def start_parent(self, config: Mapping[str, Any]) -> str:
        """Reuse the sweep's parent run or create it, with the config as params and artifact."""
        existing = self.find_parent()
        if existing is not None:
            self.parent_id = existing
            self.client.update_run(existing, status="RUNNING")
            return existing
        run = self.client.create_run(self.experiment_id, run_name=self.sweep, tags={SWEEP_TAG: self.sweep})
        self.parent_id = run.info.run_id
        flat = {key: _redact_tree(value) for key, value in flatten(config).items()}
        params = [Param(key, _param_value(value)) for key, value in flat.items() if not key.startswith("search.space.")]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.parent_id, params=params[start : start + 100])
        self.client.log_dict(self.parent_id, _redact_tree(dict(config)), "config.json")
        return self.parent_id

    def finish_parent(self, *, status: str = "FINISHED") -> None:
        if self.parent_id is not None:
            self.client.set_terminated(self.parent_id, status=status)

    def log_parent_artifacts(self, paths: Iterable[Path], *, artifact_path: str = "report") -> None:
        for path in paths:
            self.client.log_artifact(self.parent_id, str(path), artifact_path=artifact_path)

    def set_parent_tags(self, tags: Mapping[str, str], *, replace_prefix: str | None = None) -> None:
        """Set ``tags`` on the parent run; with ``replace_prefix``, first delete the parent's
        tags with that prefix that ``tags`` does not set again."""
        if replace_prefix is not None:
            stale = self.client.get_run(self.parent_id).data.tags
            for key in stale:
                if key.startswith(replace_prefix) and key not in tags:
                    self.client.delete_tag(self.parent_id, key)
        self.client.log_batch(self.parent_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    # --- children ----------------------------------------------------------------------------

    def child(self, trial_id: str, params: Mapping[str, Any], *, tags: Mapping[str, str] | None = None) -> str:
        """The trial's run: found by its tags when it exists (resume), else created, with
        ``tags`` besides the parent's, the trial's and the sweep's."""
        if trial_id in self._children:
            return self._children[trial_id]
        if self.parent_id is None:  # a tracker restored with Tune's state before its parent was made
            self.parent_id = self.find_parent()
        if self.parent_id is None:
            raise TrackingError("start_parent() must run before child runs are made")
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
            max_results=1,
        )
        if runs:
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self._logged_steps[run_id] = self._steps_already_logged(runs[0].data.metrics, run_id)
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=trial_id,
                tags={PARENT_TAG: self.parent_id, TRIAL_TAG: trial_id, SWEEP_TAG: self.sweep, **(tags or {})},
            )
            run_id = run.info.run_id
            self.client.log_batch(run_id, params=[Param(k, _param_value(v)) for k, v in params.items()])
            self._logged_steps[run_id] = {}
        self._children[trial_id] = run_id
        return run_id

    def kill_running_children(self) -> None:
        """End the child runs still RUNNING (trials an interrupted sweep stopped) as KILLED."""
        for run in self._child_runs():
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, status="KILLED")

    def child_ids(self) -> dict[str, str]:
        """``{trial_id: run_id}`` of every child run of the sweep in the store."""
        return {run.data.tags[TRIAL_TAG]: run.info.run_id for run in self._child_runs()}

    def finished_trials(self) -> set[str]:
        """The trials whose child run was finished (:meth:`finish_trial` was its last write)."""
        return {run.data.tags[TRIAL_TAG] for run in self._child_runs() if STATUS_TAG in run.data.tags}

    def log_metrics(self, trial_id: str, metrics: Mapping[str, float], *, step: int) -> int:
        """Log the numeric ``metrics`` at ``step`` unless that (key, step) is already there.

        Returns the number of points logged.
        """
        run_id = self._children[trial_id]
        logged = self._logged_steps.setdefault(run_id, {})
        now = int(time.time() * 1000)
        points = [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if _is_number(value) and step > logged.get(key, -1)
        ]
        for start in range(0, len(points), 1000):
            self.client.log_batch(run_id, metrics=points[start : start + 1000])
        for point in points:
            logged[point.key] = step
        return len(points)

    def log_result(self, trial_id: str, result: Mapping[str, Any], *, step: int) -> int:
        """Log a trial's result: its numeric metric keys (``group/name``) at ``step``, into its
        child run (found or created). Returns the number of points logged."""
        self.child(trial_id, {})
        return self.log_metrics(trial_id, {k: v for k, v in result.items() if is_metric_key(k)}, step=step)

    def finish_trial(self, trial_id: str, *, status: str, error: str | None = None) -> None:
        """End the trial's child run with its sweeper ``status`` (tag ``sweeper.status``) and,
        for a failure, the ``error`` summary (tag ``sweeper.error``)."""
        run_id = self._children.get(trial_id) or self.child_ids().get(trial_id)
        if run_id is None:
            return
        if error:
            self.client.set_tag(run_id, ERROR_TAG, error)
        self.client.set_tag(run_id, STATUS_TAG, status)
        self.client.set_terminated(run_id, status="FAILED" if status == FAILED else "FINISHED")

    def tag_children(self, key: str, values: Mapping[str, str]) -> None:
        """Set tag ``key`` on the child run of each trial in ``values`` (``{trial_id: value}``)
        and delete it from every other child run of the sweep, so that a repeated selection
        (``sweeper compare`` on a sweep that has progressed) replaces the previous one."""
        for run in self._child_runs():
            trial_id = run.data.tags.get(TRIAL_TAG)
            if trial_id in values:
                self.client.set_tag(run.info.run_id, key, values[trial_id])
            elif key in run.data.tags:
                self.client.delete_tag(run.info.run_id, key)

    def _child_runs(self) -> list[Any]:
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_id}'", max_results=50000
        )

    def _steps_already_logged(self, latest: Mapping[str, float], run_id: str) -> dict[str, int]:
        return {key: max(m.step for m in self.client.get_metric_history(run_id, key)) for key in latest}


class TrackingOutbox:
    """Tracking writes, run in the order they were queued.

    :meth:`put` queues a write and runs what is queued. When a write fails (the tracking
    server is down: the outage surfaces as many exception types), it and every write behind it
    stay queued and are retried on the next :meth:`put` or :meth:`flush`, at most every
    ``retry_every_s`` seconds, so the caller (Tune's event loop) is never blocked. Retrying is
    safe with :class:`SweepTracker`, which logs each (key, step) once.

    Args:
        wait_for: A future every write waits for first (the parent run being created); its
            exception, if any, is raised by the first :meth:`put`.
        retry_every_s: Seconds between retries after a failure.
    """

    def __init__(self, *, wait_for: Future[Any] | None = None, retry_every_s: float = 5.0) -> None:
        self.retry_every_s = retry_every_s
        self.failures = 0
        self._wait_for = wait_for
        self._queue: deque[Callable[[], object]] = deque()
        self._retry_at = 0.0

    # Pickled into Ray Tune's state with the callback: queued writes and futures stay here.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_queue": deque(), "_wait_for": None, "_retry_at": 0.0}

    @property
    def pending(self) -> int:
        """Writes queued and not yet landed."""
        return len(self._queue)

    def put(self, write: Callable[..., object], *args: Any, **kwargs: Any) -> bool:
        """Queue ``write(*args, **kwargs)`` and run the queue; True once everything landed."""
        if self._wait_for is not None:
            self._wait_for.result()  # raises what the awaited work raised
            self._wait_for = None
        self._queue.append(functools.partial(write, *args, **kwargs))
        return self.flush()

    def flush(self, *, wait_s: float = 0.0) -> bool:
        """Run the queued writes in order; True once all landed. After a failure the rest wait
        for the next call, or with ``wait_s``, are retried until that many seconds ran out."""
        deadline = time.monotonic() + wait_s
        while self._queue:
            if not wait_s and time.monotonic() < self._retry_at:
                return False
            try:
                self._queue[0]()
            except Exception as exc:  # the server's outage surfaces as many exception types
                self.failures += 1
                if self.failures == 1 or self.failures % 20 == 0:
                    _log.warning("MLflow write failed (%s); %d queued, will retry", exc, len(self._queue))
                self._retry_at = time.monotonic() + self.retry_every_s
                if self._retry_at > deadline:
                    return False
                time.sleep(self.retry_every_s)
                continue
            self._queue.popleft()
        return True


def redact(value: Any) -> Any:
    """Replace the userinfo of every URL in a string (any scheme case, any characters up to the
    last ``@``) and secret query values with ``***`` (strings only)."""
    from sweeper.storage import redact_credentials

    return redact_credentials(value) if isinstance(value, str) else value


def _redact_tree(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {key: _redact_tree(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_redact_tree(value) for value in data]
    return redact(data)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:_MAX_PARAM_LENGTH]
