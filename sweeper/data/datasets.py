"""Builtin ``digits``, CIFAR-10/100 and STL-10 from a local root, and ImageFolder trees.

Nothing is ever downloaded: every dataset but ``digits`` (scikit-learn's 1 797 real 8×8
handwritten digits, shipped with scikit-learn) is read from ``data.root``.

Splits are :class:`LabelledImages` (decoded once into memory) or, for ImageFolder trees too
large for memory (``data.in_memory``), :class:`StreamedImages`: a torch ``DataLoader`` whose
workers decode and resize each image to ``data.image_size`` (uint8, exactly the pixels the
in-memory path holds as floats), leaving augmentation to the batched on-device code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from sweeper.config import DataConfig

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

__all__ = ["DatasetSplits", "LabelledImages", "StreamedImages", "default_num_workers", "load_dataset"]

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
# data.in_memory = auto streams an ImageFolder whose decoded train/ split would exceed this.
IN_MEMORY_MAX_BYTES = 4 * 2**30
# ImageFolder lists files class by class: the train split is shuffled once with this seed, so
# that its first n images (RankMe's samples) are a random sample, in memory and streamed alike.
IMAGEFOLDER_SHUFFLE_SEED = 0
_PARALLEL_DECODE_MIN = 4096


class LabelledImages(Dataset[tuple[torch.Tensor, int]]):
    """Images (N, C, H, W) float32 in [0, 1] held in memory, with integer labels (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"images (N, C, H, W) and labels (N,) expected, got {images.shape}")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])


class StreamedImages:
    """An ImageFolder split read from disk batch by batch, for folders too large for memory.

    Each image is decoded, resized and centre-cropped to ``size`` in the loader's workers and
    arrives as uint8 (C, size, size); :meth:`loader` batches them (pinned for a CUDA device).
    The split's images are the folder's taken in ``order`` (indices into the folder; all, in
    file order, by default); ``labels`` are their class indices.
    """

    def __init__(self, folder: ImageFolder, *, num_workers: int, order: Sequence[int] | None = None) -> None:
        self.folder = folder
        self.num_workers = num_workers
        self.order = list(order) if order is not None else list(range(len(folder)))
        targets = torch.as_tensor(folder.targets, dtype=torch.long)
        self.labels = targets[self.order]

    def __len__(self) -> int:
        return len(self.order)

    @property
    def channels(self) -> int:
        return 3  # ImageFolder's loader converts every image to RGB

    def loader(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        pin_memory: bool = False,
        persistent: bool = False,
        limit: int | None = None,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        """Batches (uint8 images (B, C, size, size), labels (B,)) of the first ``limit``
        images (all by default); ``persistent`` keeps the workers between epochs. ``generator``
        draws the shuffle (torch's global generator by default); the workers' seeds come from a
        private generator, so creating or iterating the loader never consumes the global one."""
        dataset = Subset(self.folder, self.order[:limit])
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=RandomSampler(dataset, generator=generator) if shuffle else None,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=persistent and workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator(),
        )


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset's name, its pretraining/probe-training split and its test split."""

    name: str
    train: LabelledImages | StreamedImages
    test: LabelledImages | StreamedImages
    num_classes: int
    natural_images: bool  # horizontal flips make sense

    @property
    def channels(self) -> int:
        return self.train.channels

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, StreamedImages)


def default_num_workers() -> int:
    """Decoding workers when ``data.num_workers`` is unset: min(4, CPUs - 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


def load_dataset(config: DataConfig) -> DatasetSplits:
    """Load ``config.dataset`` resized to ``config.image_size`` (square); an ImageFolder tree
    streams from disk when ``config.in_memory`` says so (see :class:`StreamedImages`)."""
    size = config.image_size
    if config.dataset == "digits":
        return _digits(size)
    root = Path(config.root).expanduser() if config.root is not None else None
    if root is None or not root.is_dir():
        raise FileNotFoundError(f"data root {config.root!r} does not exist: set data.root")
    workers = config.num_workers if config.num_workers is not None else default_num_workers()
    if config.dataset == "imagefolder":
        return _imagefolder(root, size, in_memory=config.in_memory, num_workers=workers)
    return _torchvision(config.dataset, root, size, num_workers=workers)


def _digits(size: int) -> DatasetSplits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=bunch.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    images = _resize(images, size)
    return DatasetSplits(
        name="digits",
        train=LabelledImages(images[train_idx], labels[train_idx]),
        test=LabelledImages(images[test_idx], labels[test_idx]),
        num_classes=10,
        natural_images=False,
    )


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.contiguous()
    resized = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    return resized.clamp_(0.0, 1.0).contiguous()


def _stack(dataset: Dataset, size: int, *, num_workers: int) -> LabelledImages:
    """Decode a torchvision dataset (uint8 images) once into an in-memory float tensor at ``size``
    (in ``num_workers`` workers for large sets; starting them costs more than small sets take)."""
    workers = num_workers if len(dataset) >= _PARALLEL_DECODE_MIN else 0
    loader = DataLoader(dataset, batch_size=512, num_workers=workers)
    images, labels = [], []
    for batch, target in loader:
        images.append(_resize(batch.float().div_(255), size))
        labels.append(torch.as_tensor(target))
    return LabelledImages(torch.cat(images), torch.cat(labels).long())


def _transform(size: int):  # noqa: ANN202 - torchvision transform
    """Resize the short side to ``size``, centre-crop a square, uint8 (C, size, size)."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])


def _imagefolder(root: Path, size: int, *, in_memory: bool | str, num_workers: int) -> DatasetSplits:
    from torchvision.datasets import ImageFolder

    missing = [split for split in ("train", "val") if not (root / split).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"imagefolder root {str(root)!r} has no {missing[0]}/ directory: "
            "it needs train/<class>/... and val/<class>/..."
        )
    train = ImageFolder(str(root / "train"), transform=_transform(size))
    test = ImageFolder(str(root / "val"), transform=_transform(size))
    if train.classes != test.classes:
        raise ValueError(f"imagefolder {root}: train/ and val/ must hold the same class folders")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(IMAGEFOLDER_SHUFFLE_SEED)).tolist()
    if in_memory == "auto":
        in_memory = len(train) * 3 * size * size * 4 <= IN_MEMORY_MAX_BYTES
    if not in_memory:
        return DatasetSplits(
            name=root.name,
            train=StreamedImages(train, num_workers=num_workers, order=order),
            test=StreamedImages(test, num_workers=num_workers),
            num_classes=len(train.classes),
            natural_images=True,
        )
    return DatasetSplits(
        name=root.name,
        train=_stack(Subset(train, order), size, num_workers=num_workers),
        test=_stack(test, size, num_workers=num_workers),
        num_classes=len(train.classes),
        natural_images=True,
    )


def _torchvision(name: str, root: Path, size: int, *, num_workers: int) -> DatasetSplits:
    from torchvision import datasets

    transform = _transform(size)
    try:
        if name == "stl10":
            train = datasets.STL10(str(root), split="train", transform=transform, download=False)
            test = datasets.STL10(str(root), split="test", transform=transform, download=False)
            classes = 10
        else:
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            train = cls(str(root), train=True, transform=transform, download=False)
            test = cls(str(root), train=False, transform=transform, download=False)
            classes = 10 if name == "cifar10" else 100
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(
            f"{name} not found under {str(root)!r} ({exc}); put the extracted dataset there"
        ) from None
    return DatasetSplits(
        name=name,
        train=_stack(train, size, num_workers=num_workers),
        test=_stack(test, size, num_workers=num_workers),
        num_classes=classes,
        natural_images=True,
    )
