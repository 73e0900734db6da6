"""The Ray Tune function trainable: restore checkpoint -> engine -> ``tune.report``.

One trial, top to bottom: rebuild the trial's config from the sweep config and the sampled
hyperparameters, limit torch's threads to the trial's CPUs, resume from the trial's last
checkpoint if Tune hands one back, then report every epoch (with a checkpoint every
``train.checkpoint_every`` epochs and at the end). A trial that runs out of memory fails with
:class:`TrialOutOfMemoryError`, whose message says so and what to lower (Tune's ``error.txt``
and the MLflow child run's ``sweeper.error`` tag carry it).
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from sweeper.config import SweeperConfig, load_config
from sweeper.engine import EpochResult, Trainer

__all__ = ["CHECKPOINT_FILE", "TrialOutOfMemoryError", "objective_value", "train_trial"]

CHECKPOINT_FILE = "trainer.pt"
# What the allocators say: CUDA/ROCm/MPS ("... out of memory"), and the CPU's DefaultCPUAllocator.
_OOM_MARKERS = ("out of memory", "can't allocate memory")


class TrialOutOfMemoryError(RuntimeError):
    """A trial ran out of (device or host) memory; the message says where and what to lower."""


def objective_value(config: SweeperConfig, metrics: dict[str, float]) -> float:
    """The value Tune/Optuna maximise: ``search.objective``; RankMe of the embedding is clipped
    at the representation dimension (RankMe, App. B). NaN until first computed."""
    key = config.search.objective
    if key == "rankme/embedding":
        key = "rankme/embedding_clipped"
    value = metrics.get(key)
    return float("nan") if value is None else float(value)


def train_trial(params: dict[str, Any], *, base_config: dict[str, Any]) -> None:
    """Ray Tune function trainable for one trial of the sweep ``base_config``."""
    config = load_config(data=base_config).with_overrides(params)
    for name in ("ray.train", "ray.tune"):  # one "checkpoint created" line per report is noise
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(max(1, math.floor(config.search.resources.cpu)))
    try:
        _train(config)
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
        if isinstance(exc, TrialOutOfMemoryError) or not _out_of_memory(exc):
            raise
        raise TrialOutOfMemoryError(_out_of_memory_message(config, exc)) from exc


def _train(config: SweeperConfig) -> None:
    trainer = Trainer(config)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location=trainer.device, weights_only=False)
        trainer.load_state_dict(state)
    every = config.train.checkpoint_every or config.evaluation.every_n_epochs
    latest: dict[str, float] = {}
    for row in trainer.history.rows:
        latest |= row
    for result in trainer.epochs():
        latest |= result.metrics
        report = _report(config, result, latest)
        if result.done or result.epoch % every == 0:
            with tempfile.TemporaryDirectory() as directory:
                torch.save(trainer.state_dict(), Path(directory) / CHECKPOINT_FILE)
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(report)


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


def _report(config: SweeperConfig, result: EpochResult, latest: dict[str, float]) -> dict[str, Any]:
    spectrum = {"spectrum/embedding": result.spectrum} if result.spectrum is not None else {}
    return {
        **spectrum,
        **result.metrics,
        "node_id": _node_id(),
        "epoch": result.epoch,
        "status": result.status,
        "evaluated": result.evaluated,
        "objective": objective_value(config, latest),
    }


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()
