"""The pretraining loop of one trial, in plain PyTorch.

Read it top to bottom: :class:`Trainer` builds data, method, optimiser and schedule from a
config; :meth:`Trainer.epochs` trains and yields one :class:`EpochResult` per epoch, with the
label-free metrics every ``evaluation.every_n_epochs`` epochs and, after the last epoch, the
oracle probes, both computed by its :class:`~sweeper.evaluation.Evaluator`
(``trainer.evaluator``); a trial whose RankMe stays below the collapse threshold ends early.
:meth:`Trainer.state_dict` is a plain dict (config included) that :meth:`Trainer.load_state_dict`
resumes from exactly.

Data parallel: built inside a ``torch.distributed`` process group of W processes (a multi-worker
trial's Ray Train workers), the trainer trains one model with DistributedDataParallel on the
same global batch ``train.batch_size`` (B/W rows per process, :class:`~sweeper.data.EpochBatches`;
the learning-rate rules unchanged), every BatchNorm synchronised over the global batch, the
losses' batch statistics global (see each method), ``train/loss`` the global batch's mean. The
label-free metrics come from all-reduced statistics of each process's shard of the samples
(exactly the single-process values); only rank 0 runs the oracle probes. Every process runs
:meth:`Trainer.epochs` and :meth:`Trainer.state_dict` (which gathers each process's RNG state);
decisions (divergence, collapse) follow rank 0's metrics, so all stop together.

No Ray and no MLflow here: the Ray Tune trainable and the Optuna objective drive this loop.
"""

from __future__ import annotations

import inspect
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from sweeper import distributed
from sweeper.config import SweeperConfig
from sweeper.data import DatasetSplits, EpochBatches, MultiViewAugment, StreamedImages, load_dataset
from sweeper.errors import ConfigError
from sweeper.evaluation import Evaluator, to_device_floats
from sweeper.methods import SSLMethod, build_method
from sweeper.names import COLLAPSED, DIVERGED, OK, RANKME_EMBEDDING, RUNNING, TRAIN_LOSS

__all__ = ["EpochResult", "Trainer", "pick_device"]


def pick_device(preference: str = "auto") -> torch.device:
    """``cuda`` when asked for or available (``auto``), else ``cpu``."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(preference)


@dataclass
class EpochResult:
    """What one epoch produced.

    ``metrics`` uses the contract names of DESIGN.md (``train/loss``, ``rankme/embedding``,
    ``oracle/linear/<dataset>``, ...); label-free metrics appear only on evaluation epochs.
    ``status`` is ``running`` until the last result, then ``ok`` or ``diverged``.
    """

    epoch: int
    metrics: dict[str, float]
    status: str = RUNNING
    evaluated: bool = False
    spectrum: list[float] | None = None  # final result: singular values of the embeddings
    oracle_skipped: str | None = None  # final result: why the labelled probes did not run

    @property
    def done(self) -> bool:
        return self.status != RUNNING


@dataclass
class _History:
    """Per-epoch metrics so far (kept in checkpoints so a resumed trial knows its past)."""

    rows: list[dict[str, float]] = field(default_factory=list)


class _TrainingLoss(nn.Module):
    """The method's training loss as ``forward``, the call DistributedDataParallel hooks into."""

    def __init__(self, method: SSLMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, views: list[torch.Tensor], progress: float) -> torch.Tensor:
        return self.method.training_loss(views, progress=progress)


class Trainer:
    """Pretrains ``config.method`` on ``config.data`` and evaluates it (see module docstring).

    Args:
        config: the trial's validated config (hyperparameters already applied).
        data: preloaded splits (tests and benchmarks share one copy); loaded from the config
            when omitted.
        device: overrides ``train.device``.
    """

    def __init__(
        self,
        config: SweeperConfig,
        *,
        data: DatasetSplits | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(device) if device is not None else pick_device(config.train.device)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        if self.device.type == "cuda" and self.device.index is None and self.world_size > 1:
            self.device = torch.device("cuda", torch.cuda.current_device())  # DDP needs the index
        _seed_everything(config.seed)
        self.data = data if data is not None else load_dataset(config.data)
        method = build_method(config, in_channels=self.data.channels).to(self.device)
        self.method: SSLMethod = distributed.convert_sync_batchnorm(method, self.device)  # type: ignore[assignment]
        self.autocast_dtype = _autocast_dtype(config.train.precision, self.device)
        # Channels-last by default on CPU too: oneDNN's convolutions then skip the NCHW reorders
        # of every call, forward and backward (small CNN on digits: +15-50 % images/s; ResNet-18
        # unchanged; bench/throughput.py).
        if config.train.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        flip = config.data.flip if config.data.flip is not None else self.data.natural_images
        self.augment = _augmentation(config, self.method, flip=flip)
        self.batch_size = _global_batch(config, len(self.data.train), self.world_size)
        self.steps_per_epoch = len(self.data.train) // self.batch_size
        self._set_up_training_data()
        self.data_parallel: DistributedDataParallel | None = None
        if self.world_size > 1:
            self.data_parallel = DistributedDataParallel(
                _TrainingLoss(self.method),
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **_NO_BUFFER_SYNC,
            )
            # Same weights everywhere, different augmentations: each rank draws its own views.
            if self.rank > 0:
                _seed_everything(int(np.random.SeedSequence([config.seed, self.rank]).generate_state(1)[0]))
        self.evaluator = Evaluator(
            self.method,
            self.data,
            evaluation=config.evaluation,
            seed=config.seed,
            image_size=config.data.image_size,
            augment=self.augment,
            device=self.device,
            train_images=self.train_images,
        )
        self.total_steps = self.steps_per_epoch * config.train.epochs
        self.optimizer = _optimizer(config, self.method)
        self.scheduler = CosineWarmupScheduler(
            self.optimizer,
            warmup_epochs=self.steps_per_epoch * min(config.train.warmup_epochs, config.train.epochs),
            max_epochs=self.total_steps,
            end_value=0.0,
        )
        self.epoch = 0  # epochs completed
        self.history = _History()
        self.eval_seconds = 0.0
        self.train_seconds = 0.0

    def _set_up_training_data(self) -> None:
        """Each epoch's batches come from (seed, epoch) alone, so that a resumed trial sees the
        same ones; this process trains on its rows of each. In-memory data lives on the device
        (the fast path); streamed data comes through the loader's workers."""
        self.batches = EpochBatches(
            len(self.data.train), self.batch_size, seed=self.config.seed, rank=self.rank, world_size=self.world_size
        )
        self.train_images: torch.Tensor | None = None
        self.train_loader: DataLoader | None = None
        if isinstance(self.data.train, StreamedImages):
            self.train_loader = self.data.train.loader(
                self.batch_size,
                pin_memory=self.device.type == "cuda",
                persistent=True,
                batch_sampler=self.batches,
            )
        else:
            self.train_images = self.data.train.images.to(self.device)

    # --- the loop ----------------------------------------------------------------------------

    def epochs(self) -> Iterator[EpochResult]:
        """Train the remaining epochs, yielding each epoch's result; the last one is final."""
        evaluation = self.config.evaluation
        while self.epoch < self.config.train.epochs:
            started = time.perf_counter()
            loss = self._train_one_epoch()
            self.epoch += 1
            self.train_seconds += time.perf_counter() - started
            metrics: dict[str, float] = {TRAIN_LOSS: loss, "time/epoch_s": time.perf_counter() - started}
            if not math.isfinite(loss):
                self.history.rows.append(metrics)
                yield EpochResult(self.epoch, {**metrics, **self._timing()}, status=DIVERGED)
                return
            last = self.epoch == self.config.train.epochs
            evaluated = last or self.epoch % evaluation.every_n_epochs == 0
            if evaluated:
                eval_started = time.perf_counter()
                metrics |= self.evaluator.label_free()
                self.eval_seconds += time.perf_counter() - eval_started
                metrics = distributed.broadcast_object(metrics)  # rank 0's decides for all
                if self._collapsed(metrics[RANKME_EMBEDDING]):
                    self.history.rows.append(metrics)
                    yield EpochResult(self.epoch, {**metrics, **self._timing()}, status=COLLAPSED, evaluated=True)
                    return
            # The spectrum first: a collective, which the other processes must not wait for
            # while rank 0 runs the probes.
            spectrum = self.evaluator.embedding_spectrum() if last else None
            if last and self.rank == 0:
                metrics |= self.evaluator.oracle()
            self.history.rows.append(metrics)
            yield EpochResult(
                self.epoch,
                {**metrics, **self._timing()},
                status=OK if last else RUNNING,
                evaluated=evaluated,
                spectrum=spectrum,
                oracle_skipped=self.evaluator.oracle_skipped if last else None,
            )

    def _collapsed(self, rank: float) -> bool:
        """True when RankMe has been below the collapse threshold for ``patience`` evaluations
        in a row (this one included)."""
        collapse = self.config.evaluation.collapse
        if collapse is None:
            return False
        threshold = max(collapse.fraction * self.method.embedding_dim, collapse.floor)
        ranks = [row[RANKME_EMBEDDING] for row in self.history.rows if RANKME_EMBEDDING in row]
        recent = [*ranks, rank][-collapse.patience :]
        return len(recent) == collapse.patience and all(r < threshold for r in recent)

    def _train_batches(self) -> Iterator[torch.Tensor]:
        """This process's rows of one epoch's shuffled training batches on the device, float
        in [0, 1]."""
        self.batches.set_epoch(self.epoch)
        if self.train_loader is not None:
            for images, _ in self.train_loader:
                yield to_device_floats(images, self.device, non_blocking=self.device.type == "cuda")
            return
        assert self.train_images is not None
        for indices in self.batches.local_batches():
            yield self.train_images[indices.to(self.device)]

    def _train_one_epoch(self) -> float:
        self.method.train()
        total = torch.zeros((), device=self.device)
        for step, batch in enumerate(self._train_batches()):
            progress = (self.epoch * self.steps_per_epoch + step) / max(self.total_steps, 1)
            total += self.train_step(self.augment(batch), progress=progress).detach()
        # One host sync per epoch, not per step; the processes' means average to the global one.
        distributed.all_reduce_(total)
        return float(total) / self.world_size / max(self.steps_per_epoch, 1)

    def train_step(self, views: list[torch.Tensor], *, progress: float) -> torch.Tensor:
        """One optimiser step on the (augmented, normalised) ``views`` of this process's rows of
        a batch; returns the loss (this process's, which DDP averages into the global one)."""
        if self.config.train.channels_last:
            views = [view.contiguous(memory_format=torch.channels_last) for view in views]
        with torch.autocast(
            self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None
        ):
            if self.data_parallel is not None:
                loss = self.data_parallel(views, progress)
            else:
                loss = self.method.training_loss(views, progress=progress)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.method.before_optimizer_step(progress=progress, epoch=self.epoch)
        self.optimizer.step()
        self.scheduler.step()
        self.method.after_step(progress=progress)
        return loss

    def _timing(self) -> dict[str, float]:
        return {"time/eval_s": self.eval_seconds, "time/train_s": self.train_seconds}

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: a plain dict that carries its config. With
        several processes a collective (every process calls it): ``rng`` is then the list of
        every rank's RNG states."""
        rng = _rng_state()
        return {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": distributed.all_gather_objects(rng) if self.world_size > 1 else rng,
            "history": list(self.history.rows),
            "eval_seconds": self.eval_seconds,
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.history = _History(list(state["history"]))
        self.eval_seconds = float(state.get("eval_seconds", 0.0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        rng = state["rng"]
        _set_rng_state(rng[self.rank % len(rng)] if isinstance(rng, list) else rng)


# DDP must not overwrite buffers with rank 0's before every forward: SyncBatchNorm keeps the
# running statistics equal, and SwAV's queue holds each process's own rows. torch ≥ 2.14 names
# the option forward_sync_buffers (which still syncs once, at construction: they are equal then).
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)


def _global_batch(config: SweeperConfig, train_size: int, world_size: int) -> int:
    """``train.batch_size`` (at most the training split, rounded down to a multiple of the
    processes), checked to split evenly between them."""
    if config.train.batch_size % world_size:
        raise ConfigError(
            f"train.batch_size: {config.train.batch_size} does not split evenly between "
            f"{world_size} workers: use a multiple of {world_size}"
        )
    batch = min(config.train.batch_size, train_size) // world_size * world_size
    if batch < world_size:
        raise ConfigError(f"data: {train_size} training images cannot feed {world_size} workers")
    return batch


def _augmentation(config: SweeperConfig, method: SSLMethod, *, flip: bool) -> MultiViewAugment:
    """The method's views: global views at ``data.image_size`` and, for multi-crop, local views
    at ``data.local_crop_size`` (default: image_size · 96/224, the DINO/SwAV ratio) from
    ``data.local_crop_scale``; the global crops then default to (local high, 1) (DINO: (0.4, 1))."""
    data = config.data
    local = method.num_local_views
    scale = data.crop_scale
    if scale is None and local:
        scale = (data.local_crop_scale[1], 1.0)
    return MultiViewAugment(
        num_views=method.num_views - local,
        num_local_views=local,
        local_size=data.local_crop_size or max(4, round(data.image_size * 96 / 224)),
        local_crop_scale=data.local_crop_scale,
        flip=flip,
        **({"crop_scale": scale} if scale is not None else {}),
    )


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where asked (or, for ``auto``, on a CUDA device that supports it); bf16
    needs no loss scaling. Evaluation (RankMe, probes) always runs in fp32."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _optimizer(config: SweeperConfig, method: SSLMethod) -> torch.optim.Optimizer:
    train = config.train
    params = [p for p in method.parameters() if p.requires_grad]
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    return LARS(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
