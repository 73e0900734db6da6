"""The pretraining loop of one trial, in plain PyTorch.

Read it top to bottom: :class:`Trainer` builds data, method, optimiser and schedule from a
config; :meth:`Trainer.epochs` trains and yields one :class:`EpochResult` per epoch, with the
label-free metrics every ``evaluation.every_n_epochs`` epochs and, after the last epoch, the
oracle probes. :meth:`Trainer.state_dict` is a plain dict (config included) that
:meth:`Trainer.load_state_dict` resumes from exactly.

No Ray and no MLflow here: the Ray Tune trainable and the Optuna objective drive this loop.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from torch.utils.data import DataLoader

from sweeper.config import SweeperConfig
from sweeper.data import DatasetSplits, LabelledImages, MultiViewAugment, StreamedImages, load_dataset
from sweeper.data.augment import normalize
from sweeper.methods import SSLMethod, build_method
from sweeper.metrics import EmbeddingStats, lidar, rankme, singular_values
from sweeper.probes import knn_accuracy, linear_probe_accuracy

__all__ = ["EpochResult", "Trainer", "pick_device"]

_EVAL_BATCH = 1024


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
    status: str = "running"
    evaluated: bool = False
    spectrum: list[float] | None = None  # final result: singular values of the embeddings

    @property
    def done(self) -> bool:
        return self.status != "running"


@dataclass
class _History:
    """Per-epoch metrics so far (kept in checkpoints so a resumed trial knows its past)."""

    rows: list[dict[str, float]] = field(default_factory=list)

    def last(self, key: str) -> float | None:
        for row in reversed(self.rows):
            if key in row:
                return row[key]
        return None


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
        _seed_everything(config.seed)
        self.data = data if data is not None else load_dataset(config.data)
        self.method: SSLMethod = build_method(config, in_channels=self.data.channels).to(self.device)
        self.autocast_dtype = _autocast_dtype(config.train.precision, self.device)
        cuda = self.device.type == "cuda"
        # Channels-last by default on CPU too: oneDNN's convolutions then skip the NCHW reorders
        # of every call, forward and backward (small CNN on digits: +15-50 % images/s; ResNet-18
        # unchanged; bench/throughput.py).
        self.channels_last = config.train.channels_last if config.train.channels_last is not None else True
        if self.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        flip = config.data.flip if config.data.flip is not None else self.data.natural_images
        self.augment = _augmentation(config, self.method, flip=flip)
        self.batch_size = min(config.train.batch_size, len(self.data.train))
        self.steps_per_epoch = len(self.data.train) // self.batch_size
        self.pin_memory = cuda
        # In-memory data lives on the device (the fast path); streamed data comes through the
        # loader's workers, drop_last as the in-memory epochs, shuffled by its own generator
        # (reseeded every epoch, so that a resumed trial sees the same batches).
        self.train_images: torch.Tensor | None = None
        self.train_loader: DataLoader | None = None
        self._shuffle = torch.Generator()
        if isinstance(self.data.train, StreamedImages):
            self.train_loader = self.data.train.loader(
                self.batch_size,
                shuffle=True,
                drop_last=True,
                pin_memory=cuda,
                persistent=True,
                generator=self._shuffle,
            )
        else:
            self.train_images = self.data.train.images.to(self.device)
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

    # --- the loop ----------------------------------------------------------------------------

    def epochs(self) -> Iterator[EpochResult]:
        """Train the remaining epochs, yielding each epoch's result; the last one is final."""
        evaluation = self.config.evaluation
        while self.epoch < self.config.train.epochs:
            started = time.perf_counter()
            loss = self._train_one_epoch()
            self.epoch += 1
            self.train_seconds += time.perf_counter() - started
            metrics: dict[str, float] = {"train/loss": loss, "time/epoch_s": time.perf_counter() - started}
            if not math.isfinite(loss):
                self.history.rows.append(metrics)
                yield EpochResult(self.epoch, {**metrics, **self._timing()}, status="diverged")
                return
            last = self.epoch == self.config.train.epochs
            evaluated = last or self.epoch % evaluation.every_n_epochs == 0
            if evaluated:
                metrics |= self.evaluate_label_free()
                if self._collapsed(metrics["rankme/embedding"]):
                    self.history.rows.append(metrics)
                    yield EpochResult(self.epoch, {**metrics, **self._timing()}, status="collapsed", evaluated=True)
                    return
            if last:
                metrics |= self.evaluate_oracle()
            self.history.rows.append(metrics)
            yield EpochResult(
                self.epoch,
                {**metrics, **self._timing()},
                status="ok" if last else "running",
                evaluated=evaluated,
                spectrum=self.embedding_spectrum() if last else None,
            )

    def _collapsed(self, rank: float) -> bool:
        """True when RankMe has been below the collapse threshold for ``patience`` evaluations
        in a row (this one included)."""
        collapse = self.config.evaluation.collapse
        if collapse is None:
            return False
        threshold = max(collapse.fraction * self.method.embedding_dim, collapse.floor)
        ranks = [row["rankme/embedding"] for row in self.history.rows if "rankme/embedding" in row]
        recent = [*ranks, rank][-collapse.patience :]
        return len(recent) == collapse.patience and all(r < threshold for r in recent)

    def _train_batches(self) -> Iterator[torch.Tensor]:
        """One epoch of shuffled training batches on the device, float in [0, 1]."""
        if self.train_loader is not None:
            epoch_seed = np.random.SeedSequence([self.config.seed, self.epoch]).generate_state(1)[0]
            self._shuffle.manual_seed(int(epoch_seed))
            for images, _ in self.train_loader:
                yield self._on_device(images)
            return
        assert self.train_images is not None
        order = torch.randperm(len(self.train_images), device=self.device)
        for step in range(self.steps_per_epoch):
            yield self.train_images[order[step * self.batch_size : (step + 1) * self.batch_size]]

    def _on_device(self, images: torch.Tensor) -> torch.Tensor:
        """A loader's batch (uint8 from a streamed split) on the device as float in [0, 1]."""
        images = images.to(self.device, non_blocking=self.pin_memory)
        return images.float().div_(255) if images.dtype == torch.uint8 else images

    def _clean_batches(
        self, split: LabelledImages | StreamedImages, *, limit: int | None = None
    ) -> Iterator[torch.Tensor]:
        """The first ``limit`` images of ``split`` (all by default), in order, as device batches
        of up to ``_EVAL_BATCH`` in [0, 1] with the backbone's channels: for evaluation."""
        if isinstance(split, StreamedImages):
            for images, _ in split.loader(_EVAL_BATCH, pin_memory=self.pin_memory, limit=limit):
                yield _to_channels(self._on_device(images), self.data.channels)
            return
        images = self.train_images if split is self.data.train and self.train_images is not None else split.images
        for chunk in images[:limit].split(_EVAL_BATCH):
            yield chunk.to(self.device)

    def _train_one_epoch(self) -> float:
        self.method.train()
        total = torch.zeros((), device=self.device)
        for step, batch in enumerate(self._train_batches()):
            progress = (self.epoch * self.steps_per_epoch + step) / max(self.total_steps, 1)
            views = self.augment(batch)
            if self.channels_last:
                views = [view.contiguous(memory_format=torch.channels_last) for view in views]
            with torch.autocast(
                self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None
            ):
                loss = self.method.training_loss(views, progress=progress)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.method.before_optimizer_step(progress=progress, epoch=self.epoch)
            self.optimizer.step()
            self.scheduler.step()
            self.method.after_step(progress=progress)
            total += loss.detach()
        # One host sync per epoch, not per step.
        return float(total) / max(self.steps_per_epoch, 1)

    # --- evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate_label_free(self) -> dict[str, float]:
        """RankMe of embeddings and representations (and the configured peers) on up to
        ``evaluation.rankme_samples`` clean training images."""
        started = time.perf_counter()
        evaluation = self.config.evaluation
        peers = [name for name in evaluation.label_free if name not in {"rankme", "lidar"}]
        embedding = EmbeddingStats(self.method.embedding_dim, device=self.device, metrics=("rankme", *peers))
        representation = EmbeddingStats(self.method.representation_dim, device=self.device, metrics=("rankme",))
        self.method.eval()
        for batch in self._clean_batches(self.data.train, limit=evaluation.rankme_samples):
            rep, emb = self.method.embed(normalize(batch))
            embedding.update(emb)
            representation.update(rep)
        emb_metrics = embedding.compute(("rankme", *peers))
        rank = emb_metrics.pop("rankme")
        metrics = {
            "rankme/embedding": rank,
            "rankme/embedding_clipped": min(rank, float(self.method.representation_dim)),
            "rankme/representation": representation.compute(("rankme",))["rankme"],
        }
        metrics |= {f"label_free/{name}": value for name, value in emb_metrics.items()}
        if "lidar" in evaluation.label_free:
            metrics["label_free/lidar"] = self._lidar()
        prototypes = self.method.prototypes()
        if prototypes is not None:
            metrics["rankme/prototypes"] = rankme(prototypes.detach())
        self.eval_seconds += time.perf_counter() - started
        return metrics

    @torch.no_grad()
    def _lidar(self) -> float:
        """LiDAR on n clean samples × q views drawn with the training augmentations."""
        evaluation = self.config.evaluation
        views = [
            torch.stack(
                [self.method.embed(normalize(self.augment.view(chunk)))[1] for _ in range(evaluation.lidar_views)],
                dim=1,
            )
            for chunk in self._clean_batches(self.data.train, limit=evaluation.lidar_samples)
        ]
        return lidar(torch.cat(views))

    @torch.no_grad()
    def embedding_spectrum(self) -> list[float]:
        """Singular values (descending) of the embeddings RankMe is computed on, for plots."""
        samples = self._clean_batches(self.data.train, limit=self.config.evaluation.rankme_samples)
        self.method.eval()
        z = torch.cat([self.method.embed(normalize(chunk))[1] for chunk in samples])
        return singular_values(z).tolist()

    @torch.no_grad()
    def representations(self, images: LabelledImages | StreamedImages) -> torch.Tensor:
        """Frozen backbone features (N, D) of clean images, on the training device."""
        self.method.eval()
        return torch.cat([self.method.embed(normalize(batch))[0] for batch in self._clean_batches(images)])

    def evaluate_oracle(self) -> dict[str, float]:
        """Labelled probes on the frozen backbone (for comparison with RankMe only).

        The probes run on the training dataset's train/test split (``oracle/<probe>/<name>``)
        and on each of ``evaluation.oracle_datasets`` (out-of-distribution, same keys under
        its own name), followed by ``oracle/linear/ood_mean``, the mean linear-probe accuracy
        over the OOD datasets. The OOD datasets are loaded once per trainer, resized to
        ``data.image_size`` and converted to the backbone's channels (RGB to grey by the
        channel mean, grey to RGB by repetition).
        """
        evaluation = self.config.evaluation
        if not evaluation.oracle:
            return {}
        started = time.perf_counter()
        metrics: dict[str, float] = {}
        ood_linear: list[float] = []
        for index, splits in enumerate([self.data, *self._oracle_splits]):
            train, test = splits.train, splits.test
            train_x, test_x = self.representations(train), self.representations(test)
            if "linear" in evaluation.oracle:
                accuracy = linear_probe_accuracy(
                    train_x,
                    train.labels,
                    test_x,
                    test.labels,
                    epochs=evaluation.linear_epochs,
                    seed=self.config.seed,
                )
                metrics[f"oracle/linear/{splits.name}"] = accuracy
                if index > 0:
                    ood_linear.append(accuracy)
            if "knn" in evaluation.oracle:
                metrics[f"oracle/knn/{splits.name}"] = knn_accuracy(
                    train_x,
                    train.labels,
                    test_x,
                    test.labels,
                    k=evaluation.knn_k,
                    temperature=evaluation.knn_temperature,
                )
        if ood_linear:
            metrics["oracle/linear/ood_mean"] = float(np.mean(ood_linear))
        metrics["time/oracle_s"] = time.perf_counter() - started
        return metrics

    @cached_property
    def _oracle_splits(self) -> list[DatasetSplits]:
        """``evaluation.oracle_datasets`` at ``data.image_size`` with the backbone's channels,
        each under a unique name (a clash with an earlier name gets the suffix ``-2``, ...)."""
        channels = self.data.channels
        names = {self.data.name}
        loaded = []
        for data in self.config.evaluation.oracle_datasets:
            splits = load_dataset(data.model_copy(update={"image_size": self.config.data.image_size}))
            name, suffix = splits.name, 2
            while name in names:
                name, suffix = f"{splits.name}-{suffix}", suffix + 1
            names.add(name)
            if not splits.streamed:  # streamed splits are converted batch by batch
                train, test = (
                    LabelledImages(_to_channels(part.images, channels), part.labels)
                    for part in (splits.train, splits.test)
                )
                splits = replace(splits, train=train, test=test)
            loaded.append(replace(splits, name=name))
        return loaded

    def _timing(self) -> dict[str, float]:
        return {"time/eval_s": self.eval_seconds, "time/train_s": self.train_seconds}

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: a plain dict that carries its config."""
        return {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
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
        _set_rng_state(state["rng"])


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


def _to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Images (N, C, H, W) with ``channels`` channels: grey by the channel mean, or a
    single channel repeated."""
    if images.shape[1] == channels:
        return images
    if channels == 1:
        return images.mean(dim=1, keepdim=True)
    if images.shape[1] == 1:
        return images.repeat(1, channels, 1, 1)
    raise ValueError(f"cannot convert {images.shape[1]}-channel images to {channels} channels")


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
