"""Running a sweep: checks, Ray, the trials, the report.

:func:`run_sweep` first claims the sweep (one driver per sweep, :mod:`sweeper.sweep._claim`),
then checks everything that can fail before anything is written (the saved state of a sweep to
resume, the tracking and Optuna stores, the device, the data root, the cluster), runs the trials
with :func:`sweeper.trainable.train_trial`, streams every result into MLflow from the driver
(:class:`~sweeper.sweep._callback.TrackingCallback`), then writes ``trials.csv`` and the report
into the sweep directory ``<storage_path>/<name>/`` and onto the MLflow parent run. A Ctrl-C
ends it with :class:`SweepInterrupted` (runs marked KILLED, Tune's state saved for a resume).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import ray
from ray import tune

from sweeper import report
from sweeper.config import SweeperConfig
from sweeper.errors import StorageError, SweepError
from sweeper.names import OK, PHASE, SEARCH_PHASE, UNFINISHED_STATUSES
from sweeper.selection import Pick
from sweeper.storage import SweepLocation, check_database_url
from sweeper.sweep._callback import TrackingCallback
from sweeper.sweep._check import check_components, check_data_root, check_on_cluster, plugin_runtime_env
from sweeper.sweep._claim import SweepClaim, claim_sweep, no_resumable_sweep
from sweeper.sweep._cluster import check_cluster, connect
from sweeper.sweep._confirm import confirmation_plan, saved_plan
from sweeper.sweep._grow import check_search_state
from sweeper.sweep._progress import ProgressView, tune_console
from sweeper.sweep._publish import publish_report, sweep_report
from sweeper.sweep._results import (
    CONFIRM_DIR,
    EXPERIMENT_STATE,
    check_trial_state,
    trial_errors,
    trial_histories,
    trial_table,
)
from sweeper.sweep._state import (
    CONFIG_FILE,
    changed_keys,
    load_sweep_config,
    save_sweep_config,
    sweep_location,
    tune_filesystem,
)
from sweeper.sweep._tuner import make_confirm_tuner, make_tuner
from sweeper.tracking import CONFIRM_TAG, SweepTracker, check_tracking_uri

_T = TypeVar("_T")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepResult:
    """What :func:`run_sweep` produced.

    Attributes:
        directory: The sweep's local directory (for a URI sweep, the local copy of its report).
        table: One row per trial (the ``trials.csv`` contract).
        picks: ``{rule: pick}`` of every selection rule.
        parent_run_id: The MLflow parent run.
        report: The sweep's report (``format_summary(result.report)`` prints it).
        errors: ``{trial_id: "Type: message"}`` of the failed trials, when none finished ok.
    """

    directory: Path
    table: pd.DataFrame
    picks: dict[str, Pick]
    parent_run_id: str | None
    report: report.SweepReport
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def failure(self) -> str | None:
        """Why the sweep has nothing to select (no trial finished ``ok``), with the first
        trial's error; None when a trial finished ok."""
        statuses = self.table["status"].value_counts() if len(self.table) else pd.Series(dtype=int)
        if statuses.get(OK, 0):
            return None
        counts = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items())) or "no trial ran"
        message = f"no trial of sweep {self.report.config.name!r} finished ok ({counts})"
        if self.errors:
            trial_id, error = next(iter(self.errors.items()))
            message += f"; the first error, trial {trial_id}: {error}"
        return message


class SweepInterrupted(KeyboardInterrupt):
    """The sweep was interrupted (Ctrl-C): its parent run and unfinished child runs are marked
    KILLED and Tune saved its state; ``sweeper resume <location>`` continues it."""

    def __init__(self, location: SweepLocation) -> None:
        super().__init__(f"interrupted: resume with `sweeper resume {location.uri}`")
        self.location = location


def preflight(config: SweeperConfig, *, resume: bool = False, address: str | None = None) -> SweeperConfig | None:
    """Everything checked before a sweep writes anything; returns the saved config of the sweep
    to resume (None for a new sweep). :func:`run_sweep` checks the same after claiming the
    sweep; this function claims nothing.

    Raises:
        SweepError: If the sweep exists and ``resume`` is not set, there is nothing to resume,
            the resume would change what defines the trials or its saved state is damaged, the
            storage or the Optuna storage is unusable, ``train.device`` is unavailable, or the
            data root lacks what the dataset needs.
        TrackingError: If the tracking store cannot be used.
    """
    location = sweep_location(config)
    _check_bucket(location)
    exists = _storage_call(location.exists)
    if exists and not resume:
        raise SweepError(
            f"sweep {config.name!r} already exists at {location.uri}: resume it with --resume, or choose another --name"
        )
    if resume and not exists:
        raise SweepError(no_resumable_sweep(location))
    return _preflight(config, location, resume=resume, address=address)


def run_sweep(
    config: SweeperConfig,
    *,
    address: str | None = None,
    resume: bool = False,
    verbose: int = 0,
    progress: bool = True,
    claim_wait_s: float = 0.0,
) -> SweepResult:
    """Run (or resume) the sweep ``config`` and return its trial table, selections and report.

    Args:
        config: The sweep.
        address: An existing Ray cluster (``auto``, ``host:port``, ``ray://host:port``); else
            ``RAY_ADDRESS``, else an embedded local Ray.
        resume: Continue the sweep of the same name: finished trials are kept, unfinished ones
            continue from their last checkpoint, a larger ``search.num_samples`` adds trials.
        verbose: Ray Tune's own console output (0: none; 1: its status tables and per-trial
            boxes; 2: every result too).
        progress: Draw the sweep's progress view while it runs (a live table on a terminal,
            periodic lines otherwise; :class:`~sweeper.sweep._progress.ProgressView`).
        claim_wait_s: How long to wait for another driver's claim on the sweep to lapse (a
            requeued batch job); 0: refuse at once. See :mod:`sweeper.sweep._claim`.

    Raises:
        SweepError: If another driver runs the sweep, or a check before the first write fails
            (:func:`preflight`).
        SweepInterrupted: On Ctrl-C (a ``KeyboardInterrupt``), after Tune saved its state.
    """
    location = sweep_location(config)
    _check_bucket(location)  # the claim is written there
    claim = _claim(config, location, resume=resume, wait_s=claim_wait_s)  # first: one driver per sweep
    try:
        return _run_claimed(config, location, resume=resume, address=address, verbose=verbose, progress=progress)
    finally:
        claim.release()


def _run_claimed(
    config: SweeperConfig, location: SweepLocation, *, resume: bool, address: str | None, verbose: int, progress: bool
) -> SweepResult:
    saved = _preflight(config, location, resume=resume, address=address)
    # Fail fast on a tracking outage: the callback's outbox retries instead of blocking Tune.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    tracker = SweepTracker(uri=config.tracking.uri, experiment=config.experiment_name, sweep=config.name)
    started_ray = connect(address, runtime_env=plugin_runtime_env(config))
    try:
        check_cluster(config, location)
        if address or os.environ.get("RAY_ADDRESS"):
            check_on_cluster(config)  # every node imports the components, as its trials will
        _run_trials(config, location, tracker, saved=saved, verbose=verbose, progress=progress)
        if config.search.confirm is not None:
            _run_confirmation(config, location, tracker, verbose=verbose, progress=progress)
        if started_ray:  # Ray is done. Stopped in this thread, before the report: Ray's frontend
            # used from one thread while another shuts it down ends the whole process (exit 1).
            ray.shutdown()
            started_ray = False
        sweep = sweep_report(location, config)
        if _interrupted(sweep.table, config, location):  # Ctrl-C: Tune stopped the trials and saved its state
            raise SweepInterrupted(location)
        publish_report(sweep, tracker, location=location)
        tracker.finish_parent()
        finished_ok = len(sweep.table) > 0 and bool((sweep.table["status"] == OK).any())
        errors = {} if finished_ok else trial_errors(location)
        return SweepResult(location.local_path, sweep.table, dict(sweep.picks), tracker.parent_id, sweep, errors)
    except BaseException as exc:
        if tracker.parent_id is not None:
            with contextlib.suppress(Exception):  # the original error matters more
                if isinstance(exc, KeyboardInterrupt):  # the trials Tune stopped
                    tracker.kill_running_children()
                tracker.finish_parent(status="KILLED")
            if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, SweepInterrupted):
                raise SweepInterrupted(location) from None  # a second Ctrl-C: Tune's last saved state stands
        raise
    finally:
        if started_ray:
            ray.shutdown()


def _run_trials(
    config: SweeperConfig,
    location: SweepLocation,
    tracker: SweepTracker,
    *,
    saved: SweeperConfig | None,
    verbose: int,
    progress: bool,
) -> None:
    """The parent run, the Tuner (new, or restored with what Tune recorded replayed into the
    tracking store), and every trial."""
    parent: Future[Any] | None = None
    view = _progress_view(config) if progress else None
    if saved is not None:  # restored first: a state Tune cannot restore must change nothing
        callback = TrackingCallback(tracker, list(config.search.space))
        tuner = _restore(config, location, callback, saved=saved, verbose=verbose, progress=view)
        tracker.start_parent(config.to_dict())  # the replay of the restored trials needs it
        callback.replay(trial_histories(location))
    else:  # created while Tune starts the first trial's process (seconds); writes wait for it
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-parent")
        parent = pool.submit(tracker.start_parent, config.to_dict())
        pool.shutdown(wait=False)
        callback = TrackingCallback(tracker, list(config.search.space), parent=parent)
        tuner = make_tuner(config, location, callback, saved=None, verbose=verbose, progress=view)
        save_sweep_config(location, config)
    _fit(tuner, view, verbose=verbose)
    if parent is not None:
        parent.result()


def _run_confirmation(
    config: SweeperConfig, location: SweepLocation, tracker: SweepTracker, *, verbose: int, progress: bool
) -> None:
    """Train the confirmation trials of ``search.confirm`` (:mod:`sweeper.sweep._confirm`)
    once every search trial has finished: planned and saved on the first run, restored after."""
    table = trial_table(location, config)
    if not len(table) or table.loc[table[PHASE] == SEARCH_PHASE, "status"].isin(UNFINISHED_STATUSES).any():
        return  # interrupted: the search resumes first (the caller raises SweepInterrupted)
    plan = confirmation_plan(location, table, config)
    if not plan.points:
        _log.warning("nothing to confirm in sweep %s: no trial finished ok", config.name)
        return
    where = location.child(CONFIRM_DIR)
    callback = TrackingCallback(tracker, list(config.search.space), tags={CONFIRM_TAG: "true"})
    if where.glob(EXPERIMENT_STATE):  # restored: replay what the tracking store may lack
        callback.replay(trial_histories(where))
    view = _progress_view(config, confirming=len(plan.points)) if progress else None
    tuner = make_confirm_tuner(config, where, callback, points=plan.points, verbose=verbose, progress=view)
    _fit(tuner, view, verbose=verbose)


def _fit(tuner: tune.Tuner, view: ProgressView | None, *, verbose: int) -> None:
    interrupt_handler = signal.getsignal(signal.SIGINT)
    try:
        with tune_console(verbose=verbose):
            tuner.fit()
    finally:  # a failed fit may skip the experiment's end: give the terminal back
        if view is not None:
            view.close()
        if threading.current_thread() is threading.main_thread():
            # Tune's own handler (first Ctrl-C: stop the trials, save the state) outlives a
            # fit that ended normally; Ctrl-C while the report is written must interrupt.
            signal.signal(signal.SIGINT, interrupt_handler)


def _interrupted(table: pd.DataFrame, config: SweeperConfig, location: SweepLocation) -> bool:
    """Whether Tune's saved state shows trials that did not run to their end (a Ctrl-C: Tune
    stops the running trials, saves its state and returns as if finished), the confirmation's
    included once it started."""
    search = config.search
    expected = search.num_samples
    if search.algorithm == "grid":  # num_samples repeats of the grid
        expected *= math.prod(len(spec.values or ()) for spec in search.space.values())
    if search.confirm is not None:
        plan = saved_plan(location)
        expected += len(plan.points) if plan is not None else 0
    unfinished = len(table) > 0 and bool(table["status"].isin(UNFINISHED_STATUSES).any())
    return unfinished or len(table) < expected


def _restore(
    config: SweeperConfig,
    location: SweepLocation,
    callback: TrackingCallback,
    *,
    saved: SweeperConfig,
    verbose: int,
    progress: ProgressView | None,
) -> tune.Tuner:
    """The restored Tuner; a ``tuner.pkl`` that cannot be unpickled is refused, naming it."""
    try:
        return make_tuner(config, location, callback, saved=saved, verbose=verbose, progress=progress)
    except SweepError:
        raise
    except Exception as exc:  # what a damaged pickle raises varies with the damage
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SweepError(
            f"{location.uri}/tuner.pkl: Ray Tune cannot restore the sweep ({type(exc).__name__}: {reason}): "
            "restore the directory from a backup, or start the sweep again under a new --name (nothing was changed)"
        ) from None


def _progress_view(config: SweeperConfig, *, confirming: int = 0) -> ProgressView:
    return ProgressView(
        name=f"{config.name} confirmation ({confirming} trials)" if confirming else config.name,
        searched=list(config.search.space),
        epochs=config.train.epochs,
        max_concurrent=config.search.max_concurrent,
    )


def _claim(config: SweeperConfig, location: SweepLocation, *, resume: bool, wait_s: float) -> SweepClaim:
    try:
        return claim_sweep(location, name=config.name, resume=resume, wait_s=wait_s)
    except StorageError as exc:
        raise SweepError(str(exc)) from None


def _preflight(
    config: SweeperConfig, location: SweepLocation, *, resume: bool, address: str | None
) -> SweeperConfig | None:
    """What a claimed sweep checks before it writes anything (see :func:`preflight`)."""
    saved = _check_resumable(config, location) if resume else None
    check_tracking_uri(config.tracking.uri)
    if config.search.storage is not None and config.search.algorithm != "grid":
        try:
            check_database_url(config.search.storage, key="search.storage")
        except StorageError as exc:
            raise SweepError(str(exc)) from None
    if config.train.device == "cuda" and not (address or os.environ.get("RAY_ADDRESS")):
        _check_local_cuda()  # on a cluster, check_cluster looks at the nodes' GPUs
    for data in [config.data, *config.evaluation.oracle_datasets]:
        check_data_root(data)
    check_components(config)
    return saved


def _check_local_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise SweepError(
            "train.device: 'cuda' but this machine has no CUDA device (torch.cuda.is_available() is False): "
            "set train.device: auto (or cpu), or run the sweep on a cluster with GPUs (--address)"
        )


def _check_resumable(config: SweeperConfig, location: SweepLocation) -> SweeperConfig:
    """The saved config of the sweep at ``location``, when ``config`` may resume it and Tune's
    saved state can be restored as a whole (Tune would start a damaged sweep over)."""
    if not tune.Tuner.can_restore(location.path, storage_filesystem=tune_filesystem(location)):
        raise SweepError(no_resumable_sweep(location))
    saved = load_sweep_config(location.uri)
    changed = changed_keys(saved.to_dict(), config.to_dict())
    if changed:
        raise SweepError(
            f"cannot resume {config.name!r} with a different {changed[0]}: the saved config "
            f"is {location.uri}/{CONFIG_FILE}; resume with `sweeper resume {location.uri}`"
        )
    had, wanted = saved.search.num_samples, config.search.num_samples
    if wanted < had:
        raise SweepError(
            f"cannot resume {config.name!r} with search.num_samples={wanted}: it was started with {had} "
            f"and a sweep can grow, not shrink; resume with search.num_samples >= {had}"
        )
    if check_trial_state(location):  # without trials, Tune starts the search afresh anyway
        check_search_state(location, saved)
    return saved


def _storage_call(call: Callable[[], _T]) -> _T:
    """``call()``, its storage errors as sweep errors (one line, the storage named)."""
    try:
        return call()
    except StorageError as exc:
        raise SweepError(str(exc)) from None


def _check_bucket(location: SweepLocation) -> None:
    """The bucket (or container) of a URI ``storage_path`` must exist: Tune would otherwise fail
    on its first write, after the trials started."""
    if location.is_local:
        return
    bucket = location.path.split("/", 1)[0]
    try:
        exists = SweepLocation(location.filesystem, bucket, location.uri).exists()
    except StorageError as exc:
        raise SweepError(f"storage_path: {exc}") from None
    if not exists:
        raise SweepError(
            f"storage_path {location.parent_uri()}: bucket {bucket!r} does not exist: create it, or fix storage_path"
        )
