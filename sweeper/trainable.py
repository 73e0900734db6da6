"""The Ray Tune function trainable: restore checkpoint -> engine -> ``tune.report``.

One trial, top to bottom: rebuild the trial's config from the sweep config and the sampled
hyperparameters, limit torch's threads to the trial's CPUs, resume from the trial's last
checkpoint if Tune hands one back, then report every epoch (with a checkpoint every
``train.checkpoint_every`` epochs and at the end). A trial that runs out of memory fails with
:class:`TrialOutOfMemoryError`, whose message says so and what to lower (Tune's ``error.txt``
and the MLflow child run's ``sweeper.error`` tag carry it).

A trial with ``search.resources.workers`` N > 1 is a Ray Train run launched from the Tune
trial (Ray 2.60's Train V2): the trial function is only its driver; a ``TorchTrainer`` runs
:func:`train_worker` on N workers (``ScalingConfig(num_workers=N, resources_per_worker=...)``,
NCCL on GPUs, gloo on CPUs), whose :class:`~sweeper.engine.Trainer` trains one DDP model. Every
worker reports every epoch (Train's reports are collective); rank 0's metrics reach Tune through
``TuneReportCallback`` and only rank 0 writes checkpoints, which are Ray Train's, in the run
``train`` inside the trial's directory. A restarted trial (a resumed sweep, a Tune retry)
starts a Train run of the same name, which continues from its latest checkpoint; a worker that
dies is retried by Ray Train from there, ``search.max_failures`` times. Train commits its
checkpoints and Tune records the results independently, so a driver killed in between leaves
a checkpoint ahead of Tune's record: a restored worker group first reports the checkpoint's
epochs again (``replayed``), and the MLflow callback, which logs each (key, step) once, fills
in just what was missing; a checkpoint of the trial's end ends the trial there.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from sweeper.config import SweeperConfig, trial_config
from sweeper.engine import EpochResult, Trainer
from sweeper.names import ORACLE_SKIPPED, RANKME_EMBEDDING, RUNNING, SPECTRUM_EMBEDDING, objective_value

__all__ = ["CHECKPOINT_FILE", "TRAIN_RUN", "TrialOutOfMemoryError", "train_trial", "train_worker"]

CHECKPOINT_FILE = "trainer.pt"
# The Ray Train run of a data-parallel trial, in the trial's directory: a fixed name, so that a
# restarted trial finds the run and its latest checkpoint.
TRAIN_RUN = "train"
# The checkpoint's copy of the result it was taken at (status, evaluated, spectrum).
_LAST_RESULT = "last_result"
# Reports one epoch: (metrics, the trainer state to checkpoint with them, or None).
_Report = Callable[[dict[str, Any], dict[str, Any] | None], None]
# What the allocators say: CUDA/ROCm/MPS ("... out of memory"), and the CPU's DefaultCPUAllocator.
_OOM_MARKERS = ("out of memory", "can't allocate memory")


class TrialOutOfMemoryError(RuntimeError):
    """A trial ran out of (device or host) memory; the message says where and what to lower."""


def train_trial(params: dict[str, Any], *, base_config: dict[str, Any]) -> None:
    """Ray Tune function trainable for one trial of the sweep ``base_config``."""
    config = trial_config(base_config, params)
    _quiet_ray_logs()
    if config.search.resources.workers > 1:
        _drive_workers(config)
        return
    torch.set_num_threads(max(1, math.floor(config.search.resources.cpu)))
    with _out_of_memory_explained(config):
        _train(config)


def _train(config: SweeperConfig) -> None:
    """A one-process trial: resume from Tune's checkpoint, if any, then train and report."""
    trainer = Trainer(config)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            _load_checkpoint(trainer, Path(directory))
    _run_epochs(config, trainer, _tune_report)


def train_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker loop of a data-parallel trial: ``loop_config["config"]`` is the
    trial's config; the process group is Ray Train's."""
    from ray import train
    from ray.train.torch import get_device

    config = trial_config(loop_config["config"], {})
    _quiet_ray_logs()
    torch.set_num_threads(max(1, math.floor(config.search.resources.cpu)))
    with _out_of_memory_explained(config):
        trainer = Trainer(config, device=get_device() if config.search.resources.gpu > 0 else "cpu")
        report = _train_report if train.get_context().get_world_rank() == 0 else _follower_report
        checkpoint = train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                last = _load_checkpoint(trainer, Path(directory)).get(_LAST_RESULT)
            if _replay(config, trainer, report, last):
                return
        _run_epochs(config, trainer, report)


def _drive_workers(config: SweeperConfig) -> None:
    """Run the trial as a Ray Train ``TorchTrainer`` on ``search.resources.workers`` workers,
    rank 0's reports forwarded to Tune; returns when the Train run ends (raises if it failed)."""
    from ray import train
    from ray.train._internal.session import get_storage
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    resources = config.search.resources
    per_worker = {"CPU": resources.cpu} | ({"GPU": resources.gpu} if resources.gpu > 0 else {})
    storage = get_storage()  # the trial's directory, on the sweep's (possibly remote) storage
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": config.to_dict()},
        scaling_config=train.ScalingConfig(
            num_workers=resources.workers, use_gpu=resources.gpu > 0, resources_per_worker=per_worker
        ),
        torch_config=TorchConfig(backend="nccl" if resources.gpu > 0 else "gloo"),
        run_config=train.RunConfig(
            name=TRAIN_RUN,
            storage_path=storage.trial_fs_path,
            storage_filesystem=storage.storage_filesystem,
            callbacks=[TuneReportCallback()],
            checkpoint_config=train.CheckpointConfig(num_to_keep=2),
            failure_config=train.FailureConfig(max_failures=config.search.max_failures),
        ),
    )
    trainer.fit()


def _run_epochs(config: SweeperConfig, trainer: Trainer, report: _Report) -> None:
    """Train the remaining epochs, reporting each (a checkpoint every ``train.checkpoint_every``
    epochs, or every evaluation, and at the end)."""
    node_id = ray.get_runtime_context().get_node_id()
    every = config.train.checkpoint_every or config.evaluation.every_n_epochs
    latest: dict[str, float] = {}
    for row in trainer.history.rows:  # a resumed trial's objective counts its earlier epochs
        latest |= row
    for result in trainer.epochs():
        latest |= result.metrics
        metrics = _result_report(config, result, latest, node_id=node_id, workers=trainer.world_size)
        if result.done or result.epoch % every == 0:
            # Every worker takes the state: a collective in a data-parallel trial.
            state = trainer.state_dict()
            state[_LAST_RESULT] = {
                "status": result.status,
                "evaluated": result.evaluated,
                "spectrum": result.spectrum,
                "oracle_skipped": result.oracle_skipped,
            }
            report(metrics, state)
        else:
            report(metrics, None)


def _replay(config: SweeperConfig, trainer: Trainer, report: _Report, last: dict[str, Any] | None) -> bool:
    """Report again every epoch of a restored checkpoint, marked ``replayed`` (see the module
    docstring); True when that checkpoint is the trial's end (nothing left to train)."""
    node_id = ray.get_runtime_context().get_node_id()
    rows = trainer.history.rows
    latest: dict[str, float] = {}
    for epoch, row in enumerate(rows, start=1):
        latest |= row
        end = last if last is not None and epoch == len(rows) else {}
        result = EpochResult(
            epoch,
            row,
            status=end.get("status", RUNNING),
            evaluated=end.get("evaluated", RANKME_EMBEDDING in row),
            spectrum=end.get("spectrum"),
            oracle_skipped=end.get("oracle_skipped"),
        )
        metrics = _result_report(config, result, latest, node_id=node_id, workers=trainer.world_size)
        report({**metrics, "replayed": True}, None)
    return last is not None and last["status"] != RUNNING


def _report_through(api: Any, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """``api.report`` (``ray.tune`` or ``ray.train``: the same two calls) with the state, if any,
    as a checkpoint."""
    if state is None:
        api.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        _write_state(state, Path(directory))
        api.report(metrics, checkpoint=api.Checkpoint.from_directory(directory))


def _tune_report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    _report_through(tune, metrics, state)


def _train_report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    from ray import train

    _report_through(train, metrics, state)


def _follower_report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Ranks > 0: Train's reports are collective, but only rank 0's metrics and checkpoint count."""
    from ray import train

    train.report({})


def _quiet_ray_logs() -> None:
    for name in ("ray.train", "ray.tune"):  # one "checkpoint created" line per report is noise
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def _out_of_memory_explained(config: SweeperConfig) -> Iterator[None]:
    """Out-of-memory errors inside become :class:`TrialOutOfMemoryError` with what to lower."""
    try:
        yield
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
        if isinstance(exc, TrialOutOfMemoryError) or not _out_of_memory(exc):
            raise
        raise TrialOutOfMemoryError(_out_of_memory_message(config, exc)) from exc


def _save_checkpoint(trainer: Trainer, directory: Path) -> Path:
    """Write the trainer's state (model, optimizer, schedule, RNGs, history) into ``directory``."""
    return _write_state(trainer.state_dict(), directory)


def _write_state(state: dict[str, Any], directory: Path) -> Path:
    path = directory / CHECKPOINT_FILE
    torch.save(state, path)
    return path


def _load_checkpoint(trainer: Trainer, directory: Path) -> dict[str, Any]:
    """Continue ``trainer`` from the state :func:`_save_checkpoint` wrote into ``directory``;
    returns that state."""
    # The trial's own pickle (config dict, RNG states): not weights-only.
    state = torch.load(directory / CHECKPOINT_FILE, map_location=trainer.device, weights_only=False)
    trainer.load_state_dict(state)
    return state


def _out_of_memory(exc: BaseException) -> bool:
    message = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or any(marker in message for marker in _OOM_MARKERS)


def _out_of_memory_message(config: SweeperConfig, exc: BaseException) -> str:
    text = str(exc).strip()
    gpu = isinstance(exc, torch.OutOfMemoryError) or "cuda" in text.lower()
    where = "GPU memory" if gpu else "CPU memory" if "cpu" in text.lower() else "memory"
    share = config.search.resources.gpu
    hint = f", or a larger search.resources.gpu than {share:g} (fewer trials per GPU)" if gpu and 0 < share < 1 else ""
    first_line = text.splitlines()[0][:300] if text else ""
    return (
        f"trial ran out of {where} with train.batch_size={config.train.batch_size}: lower train.batch_size "
        f"(or data.image_size, or the model), or run fewer trials at once (search.max_concurrent){hint} "
        f"[{type(exc).__name__}: {first_line}]"
    )


def _result_report(
    config: SweeperConfig, result: EpochResult, latest: dict[str, float], *, node_id: str, workers: int = 1
) -> dict[str, Any]:
    """What one epoch reports to Tune: its metrics (the final spectrum as a list, and why the
    oracle was skipped, if it was), ``epoch``,
    ``status``, ``evaluated``, the ``objective`` from the latest value of every metric, the
    node it ran on (rank 0's) and, for a data-parallel trial, its number of ``workers``."""
    spectrum = {SPECTRUM_EMBEDDING: result.spectrum} if result.spectrum is not None else {}
    skipped = {ORACLE_SKIPPED: result.oracle_skipped} if result.oracle_skipped else {}
    return {
        **spectrum,
        **skipped,
        **result.metrics,
        "node_id": node_id,
        **({"workers": workers} if workers > 1 else {}),
        "epoch": result.epoch,
        "status": result.status,
        "evaluated": result.evaluated,
        "objective": objective_value(config.search.objective, latest),
    }
