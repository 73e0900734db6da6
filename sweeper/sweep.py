"""A sweep: search space -> Ray Tune ``Tuner`` -> trial table -> selection -> report.

:func:`run_sweep` checks everything that can fail before anything is written (the sweep name,
the tracking store), connects to Ray (embedded, or an existing cluster), runs the trials with
:func:`sweeper.trainable.train_trial`, streams every result into MLflow from the driver
(:class:`_TrackingCallback`), then writes ``trials.csv`` and the report into the sweep
directory ``<storage_path>/<name>/`` and onto the MLflow parent run.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import ray
import yaml
from ray import cloudpickle, tune
from ray.tune import ExperimentAnalysis
from ray.tune.search.optuna import OptunaSearch

from sweeper import report
from sweeper.config import SweeperConfig, load_config
from sweeper.selection import Pick
from sweeper.storage import StorageError, SweepLocation
from sweeper.tracking import SweepTracker, TrackingError, check_tracking_uri, flatten
from sweeper.trainable import train_trial

__all__ = [
    "Comparison",
    "SweepError",
    "SweepResult",
    "compare_sweeps",
    "load_sweep_config",
    "publish_report",
    "run_sweep",
    "sweep_directory",
    "sweep_location",
    "sweep_report",
    "trial_spectra",
    "trial_table",
]

_log = logging.getLogger(__name__)
TRIALS_FILE = "trials.csv"
CONFIG_FILE = "sweeper.yaml"


class SweepError(RuntimeError):
    """A sweep cannot start or continue; the message says why and what to do."""


@dataclass(frozen=True)
class SweepResult:
    directory: Path
    table: pd.DataFrame
    picks: dict[str, Pick]
    parent_run_id: str | None


def sweep_location(config: SweeperConfig) -> SweepLocation:
    """Where the sweep's trials, checkpoints and files live: ``<storage_path>/<name>``, a local
    directory or one in a pyarrow filesystem (``s3://...``)."""
    return SweepLocation.of(config.storage_path).child(config.name)


def sweep_directory(config: SweeperConfig) -> Path:
    """The sweep's local directory: the sweep directory itself, or for a URI ``storage_path``
    the local copy of its report (see :mod:`sweeper.storage`)."""
    return sweep_location(config).local_path


def _tune_filesystem(location: SweepLocation) -> Any:
    """Ray Tune's ``storage_filesystem``: None for a local path (Tune's own default)."""
    return None if location.is_local else location.filesystem


def _location(where: SweepLocation | Path | str) -> SweepLocation:
    return where if isinstance(where, SweepLocation) else SweepLocation.of(where)


# Keys a resumed sweep may change; everything else defines the trials and must stay.
_RESUMABLE_CHANGES = ("search.max_concurrent", "search.max_failures", "search.num_samples", "tracking.uri")


def preflight(config: SweeperConfig, *, resume: bool = False) -> SweeperConfig | None:
    """Everything checked before a sweep writes anything; returns the saved config of the sweep
    to resume (None for a new sweep)."""
    try:
        location = sweep_location(config)
        exists = location.exists()
        if not location.is_local:
            _check_bucket(location)
    except StorageError as exc:
        raise SweepError(str(exc)) from None
    if exists and not resume:
        raise SweepError(
            f"sweep {config.name!r} already exists at {location.uri}: resume it with --resume, or choose another --name"
        )
    saved: SweeperConfig | None = None
    if resume:
        if not tune.Tuner.can_restore(location.path, storage_filesystem=_tune_filesystem(location)):
            raise SweepError(
                f"no resumable sweep at {location.uri}: start it without --resume "
                "(delete the directory first if it holds an aborted start)"
            )
        saved = load_sweep_config(location.uri)
        changed = _changed_keys(saved.to_dict(), config.to_dict())
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
    check_tracking_uri(config.tracking.uri)
    return saved


def _check_bucket(location: SweepLocation) -> None:
    """The bucket (or container) of a URI ``storage_path`` must exist: Tune would otherwise fail
    on its first write, after the trials started."""
    bucket = location.path.split("/", 1)[0]
    if not SweepLocation(location.filesystem, bucket, bucket).exists():
        raise SweepError(
            f"storage_path {location.parent_uri()}: bucket {bucket!r} does not exist: create it, or fix storage_path"
        )


def load_sweep_config(name_or_path: str | Path, *, storage_path: str | Path = "./sweeps") -> SweeperConfig:
    """The config a sweep was started with, from its directory or its name under ``storage_path``.

    ``storage_path`` and ``name`` are set from where the sweep was found, so a sweep directory
    that was moved or mounted elsewhere resumes in place.
    """
    candidates = [SweepLocation.of(name_or_path)]
    if not isinstance(name_or_path, Path) and "://" not in str(name_or_path):
        candidates.append(SweepLocation.of(storage_path).child(str(name_or_path)))
    for location in candidates:
        try:
            if not location.is_file(CONFIG_FILE):
                continue
            text = location.read_bytes(CONFIG_FILE).decode()
        except StorageError as exc:
            raise SweepError(str(exc)) from None
        return load_config(
            data=yaml.safe_load(text),
            overrides={"storage_path": location.parent_uri(), "name": location.name},
        )
    raise SweepError(
        f"no sweep {str(name_or_path)!r}: give its directory or its name under {storage_path} "
        f"(a sweep directory holds {CONFIG_FILE})"
    )


def _changed_keys(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    flat_saved, flat_new = flatten(saved), flatten(new)
    return sorted(
        key
        for key in set(flat_saved) | set(flat_new)
        if flat_saved.get(key) != flat_new.get(key)
        and not key.startswith(_RESUMABLE_CHANGES)
        and key not in {"storage_path", "name"}
    )


def run_sweep(
    config: SweeperConfig, *, address: str | None = None, resume: bool = False, verbose: int = 1
) -> SweepResult:
    """Run (or resume) the sweep ``config`` and return its trial table and selections."""
    saved = preflight(config, resume=resume)
    # Fail fast on a tracking outage: the callback's outbox retries instead of blocking Tune.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    location = sweep_location(config)
    tracker = SweepTracker(uri=config.tracking.uri, experiment=config.experiment_name, sweep=config.name)
    started_ray = _connect(address)
    shutdown: threading.Thread | None = None
    try:
        _check_cluster(config)
        start_parent = functools.partial(tracker.start_parent, config.to_dict())
        parent: Future | None = None
        if resume:  # the restored tracking callback looks the parent run up: it must exist first
            start_parent()
        else:  # created while Tune starts the first trial's process (seconds each); the tracking
            # callback waits for it before its first write
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-parent")
            parent = pool.submit(start_parent)
            pool.shutdown(wait=False)
        tuner = _tuner(config, tracker, parent=parent, saved=saved, verbose=verbose)
        if not resume:
            _save_config(location, config)
        tuner.fit()
        if parent is not None:
            parent.result()
        if started_ray:  # Ray is done: stop it while the report is written (both take ~1.5 s)
            shutdown = threading.Thread(target=ray.shutdown, name="ray-shutdown")
            shutdown.start()
        sweep = sweep_report(location, config)
        publish_report(sweep, tracker)
        tracker.finish_parent()
        return SweepResult(location.local_path, sweep.table, dict(sweep.picks), tracker.parent_id)
    except BaseException:
        if tracker.parent_id is not None:
            with contextlib.suppress(Exception):  # the original error matters more
                tracker.finish_parent(status="KILLED")
        raise
    finally:
        if shutdown is not None:
            shutdown.join()
        elif started_ray:
            ray.shutdown()


def _connect(address: str | None) -> bool:
    """Connect to Ray; returns True when this call started or joined an instance."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        # An embedded, loopback-only Ray: its start-up warnings (token auth, ...) are noise here.
        ray.init(include_dashboard=False, logging_level="ERROR")
        return True
    _check_reachable(address)
    try:
        ray.init(address=address, logging_level="WARNING")
    except ConnectionError as exc:
        raise SweepError(
            f"cannot connect to Ray at {address!r} ({str(exc).splitlines()[0][:160]}): start the "
            "cluster, or fix --address / RAY_ADDRESS (omit both for an embedded local Ray)"
        ) from None
    return True


def _check_reachable(address: str, *, timeout: float = 5.0) -> None:
    """A quick TCP check, because ``ray.init`` retries an unreachable GCS for minutes."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"Ray address {address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SweepError(
            f"Ray address {address!r} is unreachable ({exc.strerror or exc}): start the cluster, "
            "or fix --address / RAY_ADDRESS (omit both for an embedded local Ray)"
        ) from None


def _check_cluster(config: SweeperConfig) -> None:
    """Refuse, before anything is written, a trial no node can host and a node-local
    ``storage_path`` on a multi-node cluster."""
    wanted = config.search.resources
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    fits = [
        node
        for node in nodes
        if node["Resources"].get("CPU", 0) >= wanted.cpu and node["Resources"].get("GPU", 0) >= wanted.gpu
    ]
    if not fits:
        biggest = max(((n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in nodes), default=(0, 0))
        raise SweepError(
            f"search.resources asks {wanted.cpu:g} CPU + {wanted.gpu:g} GPU per trial but the largest "
            f"node has {biggest[0]:g} CPU + {biggest[1]:g} GPU: lower search.resources or add such nodes"
        )
    storage = SweepLocation.of(config.storage_path)
    if len(nodes) > 1 and storage.is_local:  # object storage is shared by nature
        _check_shared(Path(storage.path), nodes)


def _check_shared(storage: Path, nodes: list[dict[str, Any]]) -> None:
    """Every node must see ``storage`` (NFS or similar) for checkpoints and resume to work."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    storage.mkdir(parents=True, exist_ok=True)
    marker = storage / f".sweeper-shared-{os.getpid()}"
    marker.write_text("shared storage check")
    try:
        probe = ray.remote(num_cpus=0)(os.path.exists)
        seen = ray.get(
            [
                probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
                    str(marker)
                )
                for node in nodes
            ],
            timeout=60,
        )
    finally:
        marker.unlink(missing_ok=True)
    if not all(seen):
        raise SweepError(
            f"storage_path {storage} is local to this node but the cluster has {len(nodes)} nodes: "
            "use shared storage (an NFS export or a bucket mounted at the same path on every node)"
        )


def _save_config(location: SweepLocation, config: SweeperConfig) -> None:
    location.write_bytes(CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False).encode())


def _tuner(
    config: SweeperConfig,
    tracker: SweepTracker,
    *,
    parent: Future | None,
    saved: SweeperConfig | None,
    verbose: int,
) -> tune.Tuner:
    """A new Tuner, or with the ``saved`` config of the sweep, its restored (and grown) one."""
    location = sweep_location(config)
    filesystem = _tune_filesystem(location)
    resources = config.search.resources
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, base_config=config.to_dict()),
        {"cpu": resources.cpu, "gpu": resources.gpu},
    )
    if saved is not None:
        added = _grow(location, config, had=saved.search.num_samples)
        if added:
            _log.info(
                "extending sweep %s by %d trials (search.num_samples=%d)", config.name, added, config.search.num_samples
            )
            _save_config(location, config)
        return tune.Tuner.restore(location.path, trainable, resume_errored=True, storage_filesystem=filesystem)
    search = config.search
    param_space: dict[str, Any] = {}
    search_alg = None
    num_samples = search.num_samples
    if search.algorithm == "grid":
        param_space = {key: tune.grid_search(spec.values) for key, spec in search.space.items()}
        if num_samples > 1:  # repeats of the grid differ by their seed
            param_space["seed"] = tune.grid_search([config.seed + i for i in range(num_samples)])
            num_samples = 1
    else:
        import optuna

        sampler = (
            optuna.samplers.TPESampler(seed=config.seed)
            if search.algorithm == "optuna"
            else optuna.samplers.RandomSampler(seed=config.seed)
        )
        search_alg = OptunaSearch(
            space=search.suggest,
            metric="objective",
            mode="max",
            sampler=sampler,
            storage=_optuna_storage(search.storage),
            study_name=config.name,
        )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="objective",
            mode="max",
            num_samples=num_samples,
            max_concurrent_trials=search.max_concurrent,
            search_alg=search_alg,
            scheduler=_scheduler(config),
            # A finished trial's worker process (torch and sweeper imported) runs the next
            # trial: ~4 s of process start-up and imports saved per trial.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=config.name,
            storage_path=str(PurePosixPath(location.path).parent),
            storage_filesystem=filesystem,
            callbacks=[_TrackingCallback(tracker, list(search.space), parent=parent)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            verbose=verbose,
        ),
    )


def _grow(location: SweepLocation, config: SweeperConfig, *, had: int) -> int:
    """Raise a restored sweep's trial budget from ``had`` to ``search.num_samples``; return how
    many trials that adds.

    ``Tuner.restore`` keeps the budget the sweep started with: Tune restores it from the search
    algorithm's saved state (a ``SearchGenerator`` for Optuna/random, a ``BasicVariantGenerator``
    for grids) after reading the new one. So the saved state itself is raised: the Optuna/random
    searcher goes on proposing (the study continues), a grid gains one more repeat per added
    sample, each with its own seed, exactly as a sweep started with the larger ``num_samples``.
    """
    search = config.search
    wanted = search.num_samples
    if wanted <= had:
        return 0
    pattern = "basic-variant-state-*.json" if search.algorithm == "grid" else "search_gen_state-*.json"
    names = location.glob(pattern)  # Tune names them by session time: the last is the newest
    if not names:
        raise SweepError(
            f"cannot extend {config.name!r} to search.num_samples={wanted}: {location.uri} holds no saved "
            f"search state ({pattern}); resume it with search.num_samples={had}"
        )
    state = cloudpickle.loads(location.read_bytes(names[-1]))
    if search.algorithm == "grid":
        from ray.tune.search.basic_variant import _TrialIterator

        seeds = [config.seed + repeat for repeat in range(had, wanted)]
        spec = copy.deepcopy(state["_iterators"][-1].unresolved_spec)
        spec["config"]["seed"] = tune.grid_search(seeds)
        state["_iterators"].append(
            _TrialIterator(
                uuid_prefix=state["_uuid_prefix"],
                num_samples=1,
                unresolved_spec=spec,
                constant_grid_search=state["_constant_grid_search"],
                start=state["_total_samples"],
                random_state=state["_random_state"],
            )
        )
        added = len(seeds) * math.prod(len(values.values) for values in search.space.values())
        state["_total_samples"] += added
        state["_finished"] = False
    else:
        added = wanted - state["total_samples"]
        state["total_samples"] = wanted
        state["finished"] = False
    location.write_bytes(names[-1], cloudpickle.dumps(state))
    return added


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


class _TrackingCallback(tune.Callback):
    """Streams trial results into MLflow from the driver: child run per trial, step = epoch.

    Every MLflow write goes through an in-order outbox: when the tracking server is down the
    writes wait (trials keep training) and are retried on the next event and, at the end of
    the sweep, for up to ``retry_s`` seconds. The tracker logs each (key, step) once, so a
    retried write never duplicates a point.
    """

    def __init__(
        self, tracker: SweepTracker, searched: list[str], *, parent: Future | None = None, retry_s: float = 600.0
    ) -> None:
        self.tracker = tracker
        self.searched = searched
        self.retry_s = retry_s
        self._parent = parent  # the parent run being created; writes wait for it
        self._pending: deque[Callable[[], object]] = deque()
        self._retry_at = 0.0
        self.failures = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pending": deque(), "_parent": None}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = {key: trial.config.get(key) for key in self.searched if key in trial.config}
        if "seed" in trial.config:
            params["seed"] = trial.config["seed"]
        self._do(self.tracker.child, trial.trial_id, params)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        metrics = {k: v for k, v in result.items() if "/" in k}
        self._do(self.tracker.child, trial.trial_id, {})
        self._do(self.tracker.log_metrics, trial.trial_id, metrics, step=int(result["epoch"]))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        status = (trial.last_result or {}).get("status", "ok")
        self._do(self.tracker.finish_child, trial.trial_id, status="stopped" if status == "running" else status)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = _error_summary(trial)
        if error:
            self._do(self.tracker.set_child_tag, trial.trial_id, ERROR_TAG, error)
        self._do(self.tracker.finish_child, trial.trial_id, status="failed")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.flush(wait_s=self.retry_s)

    def _do(self, operation: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        if self._parent is not None:
            self._parent.result()  # raises what creating the parent raised
            self._parent = None
        self._pending.append(functools.partial(operation, *args, **kwargs))
        self.flush()

    def flush(self, *, wait_s: float = 0.0) -> bool:
        """Run the queued writes in order; True once all landed. On a failure the rest wait,
        retried on a later call (or, with ``wait_s``, every few seconds until it runs out)."""
        deadline = time.monotonic() + wait_s
        while self._pending:
            if time.monotonic() < self._retry_at and not wait_s:
                return False
            try:
                self._pending[0]()
            except Exception as exc:  # the server's outage surfaces as many exception types
                self.failures += 1
                if self.failures == 1 or self.failures % 20 == 0:
                    _log.warning("MLflow write failed (%s); %d queued, will retry", exc, len(self._pending))
                self._retry_at = time.monotonic() + 5.0
                if time.monotonic() + 5.0 > deadline:
                    return False
                time.sleep(5.0)
                continue
            self._pending.popleft()
        return True


ERROR_TAG = "sweeper.error"


def _error_summary(trial: Any) -> str | None:
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


_RAY_STATUS = {"RUNNING": "running", "PENDING": "pending", "PAUSED": "pending", "ERROR": "failed"}


def trial_table(directory: SweepLocation | Path | str, config: SweeperConfig) -> pd.DataFrame:
    """One row per trial of the sweep at ``directory`` (a path, a URI or a location):
    ``trial_id``, searched keys, final metrics, ``status``, ``epochs_done``, ``wall_s`` (the
    ``trials.csv`` contract).

    Read from Ray Tune's experiment state on disk, so it works on a finished, a running and an
    interrupted sweep alike. A metric's final value is its last reported value: a trial that
    diverged or failed keeps the metrics it had.
    """
    location = _location(directory)
    analysis = ExperimentAnalysis(location.path, storage_filesystem=_tune_filesystem(location))
    frames = analysis.trial_dataframes
    keys = list(config.search.space)
    rows = []
    for trial in analysis.trials:
        last = trial.last_result or {}
        row: dict[str, Any] = {"trial_id": trial.trial_id}
        row |= {key: trial.config.get(key) for key in keys}
        if "seed" in trial.config:
            row["seed"] = trial.config["seed"]
        history = frames.get(trial.trial_id)
        if history is not None and len(history):
            for column in history.columns:
                if "/" in column and not column.startswith(("config/", "spectrum/")):
                    values = pd.to_numeric(history[column], errors="coerce").dropna()
                    if len(values):
                        row[column] = float(values.iloc[-1])
        if trial.status == "TERMINATED":
            status = last.get("status", "failed")
            # Terminated while its last result said "running": a scheduler stopped it early.
            row["status"] = "stopped" if status == "running" else status
        elif trial.status == "ERROR" or location.is_file(f"{PurePosixPath(trial.path).name}/error.txt"):
            # Tune's last state snapshot can predate the error; its error file cannot.
            row["status"] = "failed"
        elif trial.status == "PENDING" and last.get("epoch"):
            row["status"] = "running"  # Ray reloads a running trial from disk as PENDING
        else:
            row["status"] = _RAY_STATUS.get(trial.status, trial.status.lower())
        row["epochs_done"] = int(last.get("epoch", 0) or 0)
        row["wall_s"] = round(float(last.get("time_total_s", math.nan)), 2)
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values("trial_id", kind="stable").reset_index(drop=True)
    return table


def trial_spectra(directory: SweepLocation | Path | str) -> dict[str, list[float]]:
    """``{trial_id: singular values}`` of the final embeddings of each trial that reached its
    last epoch (``spectrum/embedding`` of its last Tune result; descending)."""
    spectra: dict[str, list[float]] = {}
    location = _location(directory)
    for trial in ExperimentAnalysis(location.path, storage_filesystem=_tune_filesystem(location)).trials:
        values = (trial.last_result or {}).get("spectrum/embedding")
        if isinstance(values, list | tuple) and values:
            spectra[trial.trial_id] = [float(v) for v in values]
    return spectra


def sweep_report(directory: SweepLocation | Path | str, config: SweeperConfig) -> report.SweepReport:
    """The sweep at ``directory`` as it stands (finished or not): trial table, spectra and
    every rule's pick; the report's directory is the sweep's local one."""
    location = _location(directory)
    # Tune warns about every trial without results yet; the report counts them as pending.
    analysis_logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = analysis_logger.level
    analysis_logger.setLevel(logging.ERROR)
    try:
        table, spectra = trial_table(location, config), trial_spectra(location)
    finally:
        analysis_logger.setLevel(level)
    return report.SweepReport.build(config, table, spectra=spectra, directory=location.local_path)


SELECTED_BY_TAG = "sweeper.selected_by"
PICK_TAG_PREFIX = "sweeper.pick."


def publish_report(sweep: report.SweepReport, tracker: SweepTracker | None = None) -> list[Path]:
    """Write ``trials.csv`` and the report into the sweep directory; with a ``tracker`` whose
    parent run is set, log them to the parent run as artifacts (``report/``), tag the parent
    with each rule's pick (``sweeper.pick.<rule>``) and the picked children with the rules
    that chose them (``sweeper.selected_by``), replacing the tags of an earlier selection.

    Returns the files written.
    """
    assert sweep.directory is not None, "publish_report needs the sweep directory"
    sweep.directory.mkdir(parents=True, exist_ok=True)  # a URI sweep's local copy starts empty
    trials = report.write_atomic(sweep.directory / TRIALS_FILE, sweep.table.to_csv(index=False))
    files = [
        trials,
        *report.write_report(sweep.table, sweep.picks, sweep.config, sweep.directory, spectra=sweep.spectra),
    ]
    location = sweep_location(sweep.config)
    if not location.is_local:  # the local files are the report's copy; the sweep keeps its own
        location.upload(files, root=sweep.directory)
    if tracker is not None and tracker.parent_id is not None:
        tracker.log_parent_artifacts(files)
        tracker.set_parent_tags(
            {f"{PICK_TAG_PREFIX}{rule}": ",".join(pick.trial_ids) for rule, pick in sweep.picks.items()},
            replace_prefix=PICK_TAG_PREFIX,
        )
        chosen = report.rules_by_trial(sweep.picks)
        tracker.tag_children(SELECTED_BY_TAG, {trial: ",".join(rules) for trial, rules in chosen.items()})
    return files


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_sweeps` did.

    Attributes:
        reports: One report per sweep, in the order given.
        files: ``{sweep directory: files written there}``.
        tracking: ``{sweep directory: MLflow parent run id, or why nothing was logged}``.
        combined: The files of the combined report (empty when none was asked for).
    """

    reports: list[report.SweepReport]
    files: dict[Path, list[Path]]
    tracking: dict[Path, str]
    combined: list[Path]


def compare_sweeps(
    sweeps: list[str | Path],
    *,
    storage_path: str | Path = "./sweeps",
    out: Path | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
) -> Comparison:
    """The selection report of each sweep, and a combined one of all of them.

    Each sweep (a directory, or a name under ``storage_path``) is read from Ray Tune's state
    on disk, finished or not, and gets ``trials.csv`` and its report rewritten in its
    directory. With ``track``, the report is also logged to the sweep's MLflow parent run and
    its children are re-tagged (see :func:`publish_report`) when the tracking store
    (``tracking_uri``, else the sweep's ``tracking.uri``) is reachable and holds that parent
    run; nothing is created in the store otherwise. With ``out``, the combined report
    (:func:`sweeper.report.write_comparison`) is written there.

    Raises:
        SweepError: If a sweep cannot be found or has no trial state yet.
    """
    loaded = []
    for name in sweeps:
        config = load_sweep_config(name, storage_path=storage_path)
        location = sweep_location(config)
        if not tune.Tuner.can_restore(location.path, storage_filesystem=_tune_filesystem(location)):
            raise SweepError(f"sweep {config.name!r} at {location.uri} has no trial state yet: nothing to compare")
        loaded.append(sweep_report(location, config))
    files: dict[Path, list[Path]] = {}
    tracking: dict[Path, str] = {}
    for sweep in loaded:
        assert sweep.directory is not None
        tracker, status = _existing_tracker(sweep.config, tracking_uri) if track else (None, "not asked")
        files[sweep.directory] = publish_report(sweep, tracker)
        tracking[sweep.directory] = status
    combined = report.write_comparison(loaded, out) if out is not None else []
    return Comparison(loaded, files, tracking, combined)


def _existing_tracker(config: SweeperConfig, uri: str | None) -> tuple[SweepTracker | None, str]:
    """A tracker attached to the sweep's existing parent run, or None and the reason."""
    uri = uri or config.tracking.uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).expanduser().is_file():
        return None, f"not logged: no tracking store at {uri} (give --tracking-uri)"
    try:
        check_tracking_uri(uri)
        tracker = SweepTracker(uri=uri, experiment=config.experiment_name, sweep=config.name)
        tracker.parent_id = tracker.find_parent()
    except TrackingError as exc:
        return None, f"not logged: {exc}"
    except Exception as exc:  # the store answered, but not as MLflow: say so, do not fail
        return None, f"not logged: {uri}: {type(exc).__name__}: {exc}"
    if tracker.parent_id is None:
        where = f"experiment {config.experiment_name!r}"
        return None, f"not logged: {uri} has no parent run {config.name!r} in {where}"
    return tracker, f"logged to parent run {tracker.parent_id} ({uri})"
