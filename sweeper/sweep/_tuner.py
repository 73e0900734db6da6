"""The Ray Tune ``Tuner`` of a sweep: a new one, or the restored (and grown) one of a resume.

A new Tuner gets the search space (a grid, or Optuna's TPE/random sampler with its optional
storage), the scheduler and the tracking callback. ``Tuner.restore`` brings back the run
config pickled when the sweep started (``tuner.pkl``), callbacks included, and takes no new
ones (Ray 2.60; ray-project/ray#41364): :func:`make_tuner` puts the sweep's live callback and
the resumable settings (``search.max_concurrent``, ``search.max_failures``) into it, so that a
resume with a new ``tracking.uri`` logs there.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Any

from ray import tune
from ray.tune.search.optuna import OptunaSearch

from sweeper.config import SweeperConfig
from sweeper.errors import SweepError
from sweeper.storage import SweepLocation
from sweeper.sweep._callback import TrackingCallback
from sweeper.sweep._cluster import concurrent_worker_groups
from sweeper.sweep._grow import grow
from sweeper.sweep._state import save_sweep_config, tune_filesystem
from sweeper.trainable import train_trial

_log = logging.getLogger(__name__)
# What Tune's objective is called in every result (sweeper.trainable reports it).
_OBJECTIVE = "objective"
# A data-parallel trial's Tune function only drives its Ray Train run, whose workers hold the
# CPUs and GPUs: it asks for no CPU or GPU, only a token of memory (Tune refuses an empty
# request), so a trial waiting for its workers holds no slot another trial's workers need.
_DRIVER_RESOURCES = {"cpu": 0, "memory": 64 * 2**20}


def make_tuner(
    config: SweeperConfig,
    location: SweepLocation,
    callback: TrackingCallback,
    *,
    saved: SweeperConfig | None,
    verbose: int,
    progress: tune.Callback | None = None,
) -> tune.Tuner:
    """A new Tuner for the sweep at ``location``, or with the ``saved`` config of a sweep to
    resume, its restored one, grown to ``search.num_samples``; a resume saves ``config`` as the
    sweep's ``sweeper.yaml``. ``progress`` (the console view) joins the callbacks after the
    Tuner pickled its run config: a view holds a terminal and is never restored.

    Raises:
        SweepError: If growing is impossible (see :func:`sweeper.sweep._grow.grow`), or the
            restored Tuner cannot take the new callback and ``tracking.uri`` changed.
    """
    if saved is None:
        return _with_progress(_new_tuner(config, location, callback, verbose=verbose), progress)
    tuner = tune.Tuner.restore(
        location.path, _trainable(config), resume_errored=True, storage_filesystem=tune_filesystem(location)
    )
    if not _use_on_resume(tuner, config, callback, verbose=verbose) and saved.tracking.uri != config.tracking.uri:
        raise SweepError(
            f"cannot resume {config.name!r} with tracking.uri={config.tracking.uri}: this Tuner (a Ray Client "
            f"connection?) keeps the callback it was started with, which logs to {saved.tracking.uri}; resume "
            "with that tracking.uri, or connect to the cluster directly (--address auto on the head node)"
        )
    # Tune reads the search state when it fits, so growing after the restore still counts.
    added = grow(location, config, had=saved.search.num_samples)
    if added:
        _log.info(
            "extending sweep %s by %d trials (search.num_samples=%d)", config.name, added, config.search.num_samples
        )
    # Right after growing (a grown state with the old num_samples saved would grow twice), and
    # with the resumable changes: the next resume and `sweeper compare` use the new tracking.uri.
    save_sweep_config(location, config)
    return _with_progress(tuner, progress)


def make_confirm_tuner(
    config: SweeperConfig,
    location: SweepLocation,
    callback: TrackingCallback,
    *,
    points: list[dict[str, Any]],
    verbose: int,
    progress: tune.Callback | None = None,
) -> tune.Tuner:
    """The Tuner of the sweep's confirmation trials, a Tune experiment of its own at
    ``location`` (the sweep's ``confirm/``): exactly ``points``, each a trial config (the
    searched values and a new seed), run to their last epoch (no scheduler); restored when it
    was started before."""
    if tune.Tuner.can_restore(location.path, storage_filesystem=tune_filesystem(location)):
        tuner = tune.Tuner.restore(
            location.path, _trainable(config), resume_errored=True, storage_filesystem=tune_filesystem(location)
        )
        # A Ray Client Tuner keeps the callback it was pickled with: it logs to the same runs.
        _use_on_resume(tuner, config, callback, verbose=verbose)
        return _with_progress(tuner, progress)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    tuner = tune.Tuner(
        _trainable(config),
        # Tune sets a point's values only on keys the space has: placeholders, each overwritten.
        param_space=dict.fromkeys(key for point in points for key in point),
        tune_config=tune.TuneConfig(
            metric=_OBJECTIVE,
            mode="max",
            num_samples=len(points),  # each point replaces one sample
            search_alg=BasicVariantGenerator(points_to_evaluate=points, max_concurrent=_max_concurrent(config)),
            reuse_actors=True,
        ),
        run_config=_run_config(config, location, callback, verbose=verbose),
    )
    return _with_progress(tuner, progress)


def _with_progress(tuner: tune.Tuner, progress: tune.Callback | None) -> tune.Tuner:
    """``tuner`` with the ``progress`` callback added; a Ray Client Tuner, which runs remotely,
    draws nothing here."""
    run_config = getattr(getattr(tuner, "_local_tuner", None), "get_run_config", lambda: None)()
    if progress is not None and isinstance(run_config, tune.RunConfig):
        run_config.callbacks = [*(run_config.callbacks or []), progress]
    return tuner


def _new_tuner(
    config: SweeperConfig, location: SweepLocation, callback: TrackingCallback, *, verbose: int
) -> tune.Tuner:
    param_space, search_alg, num_samples = _search_space(config)
    return tune.Tuner(
        _trainable(config),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=_OBJECTIVE,
            mode="max",
            num_samples=num_samples,
            max_concurrent_trials=_max_concurrent(config),
            search_alg=search_alg,
            scheduler=_scheduler(config),
            # A finished trial's worker process (torch and sweeper imported) runs the next
            # trial: ~4 s of process start-up and imports saved per trial.
            reuse_actors=True,
        ),
        run_config=_run_config(config, location, callback, verbose=verbose),
    )


def _run_config(
    config: SweeperConfig, location: SweepLocation, callback: TrackingCallback, *, verbose: int
) -> tune.RunConfig:
    """The run config of the Tune experiment at ``location`` (the sweep's, or its confirmation's)."""
    return tune.RunConfig(
        name=location.name,
        storage_path=str(PurePosixPath(location.path).parent),
        storage_filesystem=tune_filesystem(location),
        callbacks=[callback],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=_failure_config(config),
        verbose=verbose,
    )


def _max_concurrent(config: SweeperConfig) -> int:
    """``search.max_concurrent``; for data-parallel trials at most as many as the cluster holds
    worker groups at once (Train gang-schedules a trial's workers, so a trial beyond that would
    only wait, and Optuna would propose its hyperparameters with less to go on)."""
    search = config.search
    if search.resources.workers == 1:
        return search.max_concurrent
    return max(1, min(search.max_concurrent, concurrent_worker_groups(config)))


def _failure_config(config: SweeperConfig) -> tune.FailureConfig:
    """Tune retries a failed trial ``search.max_failures`` times; a data-parallel trial's
    retries are its Ray Train run's (from the last checkpoint), not multiplied by Tune's."""
    multi_worker = config.search.resources.workers > 1
    return tune.FailureConfig(max_failures=0 if multi_worker else config.search.max_failures)


def _use_on_resume(tuner: tune.Tuner, config: SweeperConfig, callback: TrackingCallback, *, verbose: int) -> bool:
    """Put the live ``callback`` and the resumable settings into a restored Tuner; False when
    it keeps them out of reach (a Ray Client Tuner runs remotely)."""
    internal = getattr(tuner, "_local_tuner", None)
    run_config = getattr(internal, "get_run_config", lambda: None)()
    tune_config = getattr(internal, "_tune_config", None)
    if not isinstance(run_config, tune.RunConfig) or not isinstance(tune_config, tune.TuneConfig):
        return False
    run_config.callbacks = [callback]
    run_config.failure_config = _failure_config(config)
    run_config.verbose = verbose
    tune_config.max_concurrent_trials = _max_concurrent(config)
    return True


def _trainable(config: SweeperConfig) -> Any:
    resources = config.search.resources
    wanted = _DRIVER_RESOURCES if resources.workers > 1 else {"cpu": resources.cpu, "gpu": resources.gpu}
    return tune.with_resources(tune.with_parameters(train_trial, base_config=config.to_dict()), wanted)


def _search_space(config: SweeperConfig) -> tuple[dict[str, Any], OptunaSearch | None, int]:
    """``(param_space, search_alg, num_samples)``: a grid (repeated with new seeds), or Optuna
    proposing from ``search.space`` (TPE, or random) for ``num_samples`` trials."""
    search = config.search
    if search.algorithm == "grid":
        param_space: dict[str, Any] = {key: tune.grid_search(spec.values) for key, spec in search.space.items()}
        if search.num_samples > 1:  # repeats of the grid differ by their seed
            param_space["seed"] = tune.grid_search([config.seed + i for i in range(search.num_samples)])
        return param_space, None, 1
    import optuna

    sampler = (
        optuna.samplers.TPESampler(seed=config.seed)
        if search.algorithm == "optuna"
        else optuna.samplers.RandomSampler(seed=config.seed)
    )
    search_alg = OptunaSearch(
        space=search.suggest,
        metric=_OBJECTIVE,
        mode="max",
        sampler=sampler,
        storage=_optuna_storage(search.storage),
        study_name=config.name,
    )
    return {}, search_alg, search.num_samples


def _scheduler(config: SweeperConfig) -> Any:
    """ASHA or HyperBand on the objective (RankMe by default), in epochs. Stopped trials are
    recorded with ``status=stopped`` and never picked."""
    search = config.search
    if search.scheduler is None:
        return None
    from ray.tune.schedulers import ASHAScheduler, HyperBandScheduler

    if search.scheduler == "asha":
        return ASHAScheduler(
            time_attr="epoch",
            max_t=config.train.epochs,
            grace_period=min(search.grace_period, config.train.epochs),
            reduction_factor=search.reduction_factor,
        )
    return HyperBandScheduler(time_attr="epoch", max_t=config.train.epochs, reduction_factor=search.reduction_factor)


def _optuna_storage(url: str | None) -> Any:
    """The Optuna storage of ``search.storage`` (None: in memory, saved with Tune's state)."""
    if url is None:
        return None
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    return optuna.storages.RDBStorage(url)
