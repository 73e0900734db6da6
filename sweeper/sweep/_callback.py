"""The Ray Tune callback that streams trials into MLflow from the driver.

Thin, like Ray's own ``MLflowLoggerCallback``: each hook turns Tune's event into one write of
:class:`sweeper.tracking.SweepTracker` (child run per trial, metrics with step = epoch, the
trial's status at its end) and queues it in a :class:`sweeper.tracking.TrackingOutbox`, which
runs the writes in order and retries them while the tracking server is down. A trial's status
comes from :func:`sweeper.names.trial_status`, the map the results reader uses too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ray import cloudpickle, tune

from sweeper.names import trial_status
from sweeper.sweep._results import TrialHistory
from sweeper.tracking import SweepTracker, TrackingOutbox

_log = logging.getLogger(__name__)


class TrackingCallback(tune.Callback):
    """Streams trial results into MLflow: child run per trial, step = epoch.

    Args:
        tracker: The sweep's tracker (its parent run is, or is being, created).
        searched: The searched keys: a child run's params (with the trial's seed).
        parent: The parent run being created; every write waits for it.
        retry_s: How long the end of the sweep retries writes that could not land yet.
        tags: Tags of every child run it creates (``sweeper.confirm`` for confirmation trials).
    """

    # A callback pickled by an older sweeper (tuner.pkl) has no tags of its own.
    tags: Mapping[str, str] = MappingProxyType({})

    def __init__(
        self,
        tracker: SweepTracker,
        searched: list[str],
        *,
        parent: Future[Any] | None = None,
        retry_s: float = 600.0,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.tracker = tracker
        self.searched = searched
        self.tags = dict(tags or {})
        self.retry_s = retry_s
        self.outbox = TrackingOutbox(wait_for=parent)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.outbox.put(self.tracker.child, trial.trial_id, trial_params(trial.config, self.searched), tags=self.tags)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.outbox.put(self.tracker.log_result, trial.trial_id, result, step=int(result["epoch"]))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        status = trial_status("TERMINATED", trial.last_result)
        self.outbox.put(self.tracker.finish_trial, trial.trial_id, status=status)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        status = trial_status("ERROR", trial.last_result)
        self.outbox.put(self.tracker.finish_trial, trial.trial_id, status=status, error=error_summary(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.outbox.flush(wait_s=self.retry_s)

    def replay(self, histories: Iterable[TrialHistory]) -> None:
        """Queue what Tune recorded of restored trials whose child run is not finished in the
        tracking store (a resume into a new ``tracking.uri``; writes lost with a killed driver):
        the child run, every result, and the status of those Tune will not run again. Points
        already in the store are skipped (:meth:`SweepTracker.log_metrics`). The parent run
        must exist."""
        try:
            finished = self.tracker.finished_trials()
        except Exception as exc:  # the store is down: replay everything, the outbox retries it
            _log.warning("cannot list the finished child runs (%s): replaying every trial", exc)
            finished = set()
        for history in histories:
            if history.trial_id in finished:
                continue
            params = trial_params(history.config, self.searched)
            self.outbox.put(self.tracker.child, history.trial_id, params, tags=self.tags)
            for result in history.results:
                self.outbox.put(self.tracker.log_result, history.trial_id, result, step=int(result["epoch"]))
            if history.ray_state == "TERMINATED":  # Tune resumes the others (errored ones too)
                status = trial_status(history.ray_state, history.last_result)
                self.outbox.put(self.tracker.finish_trial, history.trial_id, status=status)


def trial_params(config: Mapping[str, Any], searched: Iterable[str]) -> dict[str, Any]:
    """A child run's params: the trial's searched values and, for repeats, its seed."""
    params = {key: config[key] for key in searched if key in config}
    if "seed" in config:
        params["seed"] = config["seed"]
    return params


def error_summary(trial: Any) -> str | None:
    """``Type: first line`` of the exception that failed ``trial`` (Ray's wrapper removed), read
    from the error Tune just wrote on the driver (its copy in the sweep directory comes later)."""
    try:
        path = Path(trial.pickled_error_file or "")
        # Tune's own pickle of the trial's exception, written by this driver a moment ago.
        error = cloudpickle.loads(path.read_bytes()) if path.is_file() else trial.get_pickled_error()
    except Exception:  # an unreadable error file must not stop the sweep
        return None
    cause = getattr(error, "cause", None) or error
    if cause is None:
        return None
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:500]
