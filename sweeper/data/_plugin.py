"""What a data-set plugin's factory returns, read into :class:`~sweeper.data.DatasetSplits`.

The public shape, documented in the README ("Bring your own"): the factory returns
``(train, test)`` or a mapping ``{"train": ..., "test": ...}`` (``test`` optional, or None);
each split is one of

* an image tensor (or numpy array) ``(N, C, H, W)`` — or ``(N, H, W)`` for one channel — of
  floats in [0, 1] or of uint8 in 0..255: unlabelled images;
* a pair ``(images, labels)``, ``labels`` integers ``(N,)`` or None;
* a torch ``Dataset`` whose items are an image tensor ``(C, H, W)`` or ``(image, label)``.

Images of another side are resized to ``data.image_size`` (bilinear, antialiased), as the
built-in data sets are. Labels are only ever used by the oracle probes: without them (or
without a test split) the probes are skipped, never invented.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sweeper.data.datasets import DatasetSplits, LabelledImages, _resize
from sweeper.errors import DataError

__all__ = ["plugin_splits"]

_BATCH = 512


def plugin_splits(produced: Any, *, name: str, image_size: int, natural_images: bool = True) -> DatasetSplits:
    """``produced`` (a factory's return value, see the module docstring) as splits named
    ``name`` at ``image_size``; ``natural_images`` turns random flips on by default.

    Raises:
        DataError: one line saying what the factory returned and what it should return.
    """
    if isinstance(produced, Mapping):
        unknown = sorted(set(produced) - {"train", "test"})
        if unknown or "train" not in produced:
            raise DataError(
                f"data set {name!r}: the factory returned a mapping with keys {sorted(produced)}; "
                "it needs 'train' (and optionally 'test')"
            )
        train, test = produced["train"], produced.get("test")
    elif isinstance(produced, tuple) and len(produced) == 2:
        train, test = produced
    else:
        raise DataError(
            f"data set {name!r}: the factory returned {type(produced).__name__}; return (train, test) or "
            "{'train': ..., 'test': ...}, each images (N, C, H, W), (images, labels) or a torch Dataset"
        )
    train_split = _split(train, name=name, which="train", size=image_size)
    test_split = None if test is None else _split(test, name=name, which="test", size=image_size)
    if test_split is not None and test_split.channels != train_split.channels:
        raise DataError(
            f"data set {name!r}: train images have {train_split.channels} channels, test images {test_split.channels}"
        )
    labels = [s.labels for s in (train_split, test_split) if s is not None and s.labels is not None]
    num_classes = int(max(int(t.max()) for t in labels)) + 1 if labels and all(len(t) for t in labels) else None
    return DatasetSplits(
        name=name,
        train=train_split,
        test=test_split,
        num_classes=num_classes if train_split.labels is not None else None,
        natural_images=natural_images,
    )


def _split(value: Any, *, name: str, which: str, size: int) -> LabelledImages:
    where = f"data set {name!r}, {which} split"
    if isinstance(value, Dataset) and not isinstance(value, LabelledImages):
        images, labels = _stack(value, where=where)
    elif isinstance(value, LabelledImages):
        images, labels = value.images, value.labels
    elif isinstance(value, tuple | list) and len(value) == 2:
        images, labels = value
    else:
        images, labels = value, None
    images = _images(images, where=where)
    labels = None if labels is None else _labels(labels, count=len(images), where=where)
    if images.shape[-2:] != (size, size):
        images = _resize(images, size)
    return LabelledImages(images.contiguous(), labels)


def _images(value: Any, *, where: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise DataError(f"{where}: images must be a tensor or an array (N, C, H, W), got {type(value).__name__}")
    if value.ndim == 3:
        value = value.unsqueeze(1)
    if value.ndim != 4 or value.shape[0] == 0:
        raise DataError(f"{where}: images must be (N, C, H, W) with N > 0, got shape {tuple(value.shape)}")
    if value.dtype == torch.uint8:
        return value.float().div_(255)
    if not value.is_floating_point():
        raise DataError(f"{where}: images must be floats in [0, 1] or uint8, got {value.dtype}")
    value = value.float()
    low, high = float(value.min()), float(value.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 1:
        raise DataError(
            f"{where}: float images must lie in [0, 1] (found {low:.3g}..{high:.3g}); sweeper normalises them "
            "itself: return them unnormalised"
        )
    return value


def _labels(value: Any, *, count: int, where: str) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(value))
    if labels.ndim != 1 or len(labels) != count:
        raise DataError(f"{where}: labels must be (N,) with N = {count} images, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise DataError(f"{where}: labels must be integer class indices, got {labels.dtype}")
    labels = labels.long()
    if len(labels) and int(labels.min()) < 0:
        raise DataError(f"{where}: labels must be class indices >= 0 (found {int(labels.min())})")
    return labels


def _stack(dataset: Dataset, *, where: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A ``Dataset`` of images or (image, label) items, read once into memory."""
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for batch in DataLoader(dataset, batch_size=_BATCH):
        if isinstance(batch, list | tuple):
            if len(batch) != 2:
                raise DataError(f"{where}: a Dataset item must be an image or (image, label), got {len(batch)} values")
            images.append(torch.as_tensor(batch[0]))
            labels.append(torch.as_tensor(batch[1]))
        else:
            images.append(torch.as_tensor(batch))
    if not images:
        raise DataError(f"{where}: the Dataset is empty")
    return torch.cat(images), torch.cat(labels) if labels else None
