"""Evaluation of one model: label-free metrics, LiDAR, the embedding spectrum, oracle probes.

:class:`Evaluator` holds what evaluation needs (the method, its device, the data splits, the
config's ``evaluation`` section and the training augmentation for LiDAR's views) and computes,
on clean (un-augmented) images:

* :meth:`Evaluator.label_free`: RankMe (Garrido et al. 2023) of embeddings, representations and
  prototypes, and the configured peers (α-ReQ, classical rank, ..., coherence and the
  pseudo-condition number, the TwoNN intrinsic dimension, LiDAR of the embedding and of the
  representation);
* :meth:`Evaluator.embedding_spectrum`: the singular values RankMe is computed from, for plots;
* :meth:`Evaluator.oracle`: the labelled probes (linear, k-NN) on the frozen backbone, on the
  training dataset and on ``evaluation.oracle_datasets`` (out of distribution), for comparison.

Evaluation always runs in fp32 (no autocast), whatever the training precision, so that RankMe
is exact. :class:`sweeper.engine.Trainer` owns one. No Ray and no MLflow here.

In a ``torch.distributed`` group (a multi-worker trial) the label-free metrics, LiDAR and the
spectrum are collectives: each process embeds its contiguous part of the samples and the
statistics are all-reduced (:meth:`sweeper.metrics.EmbeddingStats.all_reduce`,
:func:`~sweeper.metrics.distributed_lidar`, :func:`~sweeper.metrics.distributed_singular_values`),
which gives the single-process values without gathering an embedding. The oracle is not
sharded: one process (the trainer's rank 0) runs it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from functools import cached_property

import numpy as np
import torch

from sweeper import distributed
from sweeper.config import EvaluationConfig
from sweeper.data import DatasetSplits, LabelledImages, MultiViewAugment, StreamedImages, load_dataset
from sweeper.data.augment import normalize
from sweeper.methods import SSLMethod
from sweeper.metrics import (
    EmbeddingStats,
    coherence_and_condition,
    distributed_coherence_and_condition,
    distributed_lidar,
    distributed_singular_values,
    intrinsic_dimension,
    lidar,
    rankme,
    singular_values,
)
from sweeper.names import (
    OOD_MEAN,
    RANKME_EMBEDDING,
    RANKME_EMBEDDING_CLIPPED,
    RANKME_PROTOTYPES,
    RANKME_REPRESENTATION,
    label_free_key,
    oracle_key,
)
from sweeper.probes import knn_accuracy, linear_probe_accuracy

__all__ = ["Evaluator", "to_device_floats"]

_EVAL_BATCH = 1024
# Label-free metrics that are not computed from the embedding statistics.
_LIDARS = ("lidar", "lidar_representation")
_FROM_ROWS = ("coherence", "pseudo_condition", "intrinsic_dimension")
_NOT_FROM_STATS = {"rankme", *_LIDARS, *_FROM_ROWS}


def to_device_floats(images: torch.Tensor, device: torch.device, *, non_blocking: bool = False) -> torch.Tensor:
    """A loader's batch on ``device`` as float in [0, 1] (uint8 from a streamed split is scaled)."""
    images = images.to(device, non_blocking=non_blocking)
    return images.float().div_(255) if images.dtype == torch.uint8 else images


class Evaluator:
    """Evaluates ``method`` on ``data`` as ``evaluation`` configures (see the module docstring).

    Args:
        method: the model; read in place, so it follows the trainer's updates.
        data: the training dataset's splits (label-free metrics read ``data.train``).
        evaluation: the config's ``evaluation`` section.
        seed: the trial's seed (the linear probe's initialisation and batches).
        image_size: ``data.image_size``, at which the OOD datasets are loaded.
        augment: the training augmentation, for LiDAR's augmented views.
        device: where the method lives.
        train_images: ``data.train``'s images already on ``device`` (the trainer's copy), if any.
    """

    def __init__(
        self,
        method: SSLMethod,
        data: DatasetSplits,
        *,
        evaluation: EvaluationConfig,
        seed: int,
        image_size: int,
        augment: MultiViewAugment,
        device: torch.device,
        train_images: torch.Tensor | None = None,
    ) -> None:
        self.method = method
        self.data = data
        self.evaluation = evaluation
        self.seed = seed
        self.image_size = image_size
        self.augment = augment
        self.device = device
        self.train_images = train_images

    # --- label-free ----------------------------------------------------------------------------

    @torch.no_grad()
    def label_free(self) -> dict[str, float]:
        """RankMe of embeddings and representations (and the configured peers) on up to
        ``evaluation.rankme_samples`` clean training images; RankMe of the prototypes for
        clustering methods.

        The peers are metrics of the embedding (the projector output RankMe reads), except
        ``lidar_representation``. Coherence, the pseudo-condition number and the intrinsic
        dimension need the embeddings' rows, which are then kept (N × K floats on the device);
        in a multi-worker trial coherence and the condition number are exact collectives, the
        intrinsic dimension each process's estimate on its own rows (rank 0's is reported).
        """
        evaluation = self.evaluation
        peers = [name for name in evaluation.label_free if name not in _NOT_FROM_STATS]
        embedding = EmbeddingStats(self.method.embedding_dim, device=self.device, metrics=("rankme", *peers))
        representation = EmbeddingStats(self.method.representation_dim, device=self.device, metrics=("rankme",))
        rows: list[torch.Tensor] | None = [] if set(_FROM_ROWS) & set(evaluation.label_free) else None
        self.method.eval()
        for batch in self._clean_batches(self.data.train, limit=evaluation.rankme_samples, sharded=True):
            rep, emb = self.method.embed(normalize(batch))
            embedding.update(emb)
            representation.update(rep)
            if rows is not None:
                rows.append(emb)
        embedding.all_reduce()
        representation.all_reduce()
        emb_metrics = embedding.compute(("rankme", *peers))
        rank = emb_metrics.pop("rankme")
        metrics = {
            RANKME_EMBEDDING: rank,
            RANKME_EMBEDDING_CLIPPED: min(rank, float(self.method.representation_dim)),
            RANKME_REPRESENTATION: representation.compute(("rankme",))["rankme"],
        }
        metrics |= {label_free_key(name): value for name, value in emb_metrics.items()}
        if rows is not None:
            metrics |= self._row_metrics(rows)
        lidars = [name for name in _LIDARS if name in evaluation.label_free]
        if lidars:
            metrics |= self._lidars(lidars)
        prototypes = self.method.prototypes()
        if prototypes is not None:
            metrics[RANKME_PROTOTYPES] = rankme(prototypes.detach())
        return metrics

    @torch.no_grad()
    def lidar(self) -> float:
        """LiDAR (Thilak et al. 2024) on ``evaluation.lidar_samples`` clean training images ×
        ``evaluation.lidar_views`` views drawn with the training augmentation."""
        return self._lidars(["lidar"])[label_free_key("lidar")]

    def _lidars(self, names: list[str]) -> dict[str, float]:
        """``label_free/lidar`` (of the embeddings) and ``label_free/lidar_representation`` (of
        the backbone's output), as ``names`` asks, from the same augmented views."""
        evaluation = self.evaluation
        output = {"lidar_representation": 0, "lidar": 1}  # which of method.embed's pair
        dims = {"lidar_representation": self.method.representation_dim, "lidar": self.method.embedding_dim}
        chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        for chunk in self._clean_batches(self.data.train, limit=evaluation.lidar_samples, sharded=True):
            pairs = [self.method.embed(normalize(self.augment.view(chunk))) for _ in range(evaluation.lidar_views)]
            for name in names:
                chunks[name].append(torch.stack([pair[output[name]] for pair in pairs], dim=1))
        values = {}
        for name, views in chunks.items():
            if distributed.is_distributed():
                local = torch.cat(views) if views else torch.empty(0, evaluation.lidar_views, dims[name])
                values[label_free_key(name)] = distributed_lidar(local.to(self.device))
            else:
                values[label_free_key(name)] = lidar(torch.cat(views))
        return values

    def _row_metrics(self, rows: list[torch.Tensor]) -> dict[str, float]:
        """Coherence, pseudo-condition number (Tsitsulin et al. 2023) and TwoNN intrinsic
        dimension (Facco et al. 2017) of the embeddings' rows, as ``evaluation.label_free`` asks."""
        wanted = self.evaluation.label_free
        dim = self.method.embedding_dim
        z = torch.cat(rows) if rows else torch.empty(0, dim, device=self.device)
        metrics = {}
        if "coherence" in wanted or "pseudo_condition" in wanted:
            if distributed.is_distributed():
                value, condition = distributed_coherence_and_condition(z)
            else:
                value, condition = coherence_and_condition(z)
            for name, number in (("coherence", value), ("pseudo_condition", condition)):
                if name in wanted:
                    metrics[label_free_key(name)] = number
        if "intrinsic_dimension" in wanted:
            metrics[label_free_key("intrinsic_dimension")] = intrinsic_dimension(z) if len(z) else float("nan")
        return metrics

    @torch.no_grad()
    def embedding_spectrum(self) -> list[float]:
        """Singular values (descending) of the embeddings RankMe is computed on, for plots."""
        samples = self._clean_batches(self.data.train, limit=self.evaluation.rankme_samples, sharded=True)
        self.method.eval()
        parts = [self.method.embed(normalize(chunk))[1] for chunk in samples]
        if distributed.is_distributed():
            z = torch.cat(parts) if parts else torch.empty(0, self.method.embedding_dim, device=self.device)
            return distributed_singular_values(z).tolist()
        return singular_values(torch.cat(parts)).tolist()

    # --- oracle --------------------------------------------------------------------------------

    @torch.no_grad()
    def representations(self, images: LabelledImages | StreamedImages) -> torch.Tensor:
        """Frozen backbone features (N, D) of clean images, on the method's device."""
        self.method.eval()
        return torch.cat([self.method.embed(normalize(batch))[0] for batch in self._clean_batches(images)])

    def oracle(self) -> dict[str, float]:
        """Labelled probes on the frozen backbone (for comparison with RankMe only).

        The probes run on the training dataset's train/test split (``oracle/<probe>/<name>``)
        and on each of :attr:`ood_splits` (same keys under its own name), followed by
        ``oracle/linear/ood_mean``, the mean linear-probe accuracy over the OOD datasets, and
        ``time/oracle_s``. Nothing when ``evaluation.oracle`` is empty.
        """
        evaluation = self.evaluation
        if not evaluation.oracle:
            return {}
        started = time.perf_counter()
        metrics: dict[str, float] = {}
        ood_linear: list[float] = []
        for index, splits in enumerate([self.data, *self.ood_splits]):
            train, test = splits.train, splits.test
            if splits.unlabelled_reason is not None or test is None:  # see oracle_skipped
                continue
            train_x, test_x = self.representations(train), self.representations(test)
            if "linear" in evaluation.oracle:
                accuracy = linear_probe_accuracy(
                    train_x, train.labels, test_x, test.labels, epochs=evaluation.linear_epochs, seed=self.seed
                )
                metrics[oracle_key("linear", splits.name)] = accuracy
                if index > 0:
                    ood_linear.append(accuracy)
            if "knn" in evaluation.oracle:
                metrics[oracle_key("knn", splits.name)] = knn_accuracy(
                    train_x,
                    train.labels,
                    test_x,
                    test.labels,
                    k=evaluation.knn_k,
                    temperature=evaluation.knn_temperature,
                )
        if ood_linear:
            metrics[OOD_MEAN] = float(np.mean(ood_linear))
        metrics["time/oracle_s"] = time.perf_counter() - started
        return metrics

    @property
    def oracle_skipped(self) -> str | None:
        """Why the configured probes do not run on some data set (no labels, no test split):
        the reasons joined, or None when every probe runs (or none is configured). Labels are
        never invented."""
        if not self.evaluation.oracle:
            return None
        reasons = [splits.unlabelled_reason for splits in [self.data, *self.ood_splits]]
        found = [reason for reason in reasons if reason is not None]
        return "; ".join(found) + ": the labelled probes are skipped" if found else None

    @cached_property
    def ood_splits(self) -> list[DatasetSplits]:
        """``evaluation.oracle_datasets``, loaded once, at ``image_size`` with the backbone's
        channels (RGB to grey by the channel mean, grey to RGB by repetition), each under a
        unique name (a clash with an earlier name gets the suffix ``-2``, ...)."""
        channels = self.data.channels
        names = {self.data.name}
        loaded = []
        for data in self.evaluation.oracle_datasets:
            splits = load_dataset(data.model_copy(update={"image_size": self.image_size}))
            name, suffix = splits.name, 2
            while name in names:
                name, suffix = f"{splits.name}-{suffix}", suffix + 1
            names.add(name)
            if not splits.streamed:  # streamed splits are converted batch by batch
                train, test = (
                    None if part is None else LabelledImages(_to_channels(part.images, channels), part.labels)
                    for part in (splits.train, splits.test)
                )
                splits = replace(splits, train=train, test=test)
            loaded.append(replace(splits, name=name))
        return loaded

    # --- batches -------------------------------------------------------------------------------

    def _clean_batches(
        self, split: LabelledImages | StreamedImages, *, limit: int | None = None, sharded: bool = False
    ) -> Iterator[torch.Tensor]:
        """The first ``limit`` images of ``split`` (all by default), in order, as device batches
        of up to ``_EVAL_BATCH`` in [0, 1] with the backbone's channels; ``sharded``: only this
        process's contiguous part of them (:func:`sweeper.distributed.shard`)."""
        count = len(split) if limit is None else min(limit, len(split))
        rows = distributed.shard(count) if sharded else slice(0, count)
        if isinstance(split, StreamedImages):
            cuda = self.device.type == "cuda"
            source, first = (split.part(rows), None) if sharded else (split, limit)
            for images, _ in source.loader(_EVAL_BATCH, pin_memory=cuda, limit=first):
                yield _to_channels(to_device_floats(images, self.device, non_blocking=cuda), self.data.channels)
            return
        on_device = split is self.data.train and self.train_images is not None
        images = self.train_images if on_device else split.images
        for chunk in images[rows].split(_EVAL_BATCH):
            yield chunk.to(self.device)


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
