"""Builtin ``digits``, Fashion-MNIST and MNIST (IDX files), CIFAR-10/100 and STL-10 from a
local root, and ImageFolder trees.

Nothing is ever downloaded: every dataset but ``digits`` (scikit-learn's 1 797 real 8×8
handwritten digits, shipped with scikit-learn) is read from ``data.root``; Fashion-MNIST's
IDX files come with Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
``data.train_per_class`` keeps a class-balanced seeded subset of any train split
(:func:`balanced_subset`), taken before decoding and resizing.

Splits are :class:`LabelledImages` (decoded once into memory) or, for ImageFolder trees too
large for memory (``data.in_memory``), :class:`StreamedImages`: a torch ``DataLoader`` whose
workers decode and resize each image to ``data.image_size`` (uint8, exactly the pixels the
in-memory path holds as floats), leaving augmentation to the batched on-device code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, Subset

from sweeper import registry
from sweeper.config import DataConfig
from sweeper.data._idx import read_idx_split
from sweeper.errors import DataError

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

__all__ = [
    "DatasetSplits",
    "LabelledImages",
    "StreamedImages",
    "balanced_subset",
    "default_num_workers",
    "load_dataset",
    "load_digits",
    "load_idx",
    "load_imagefolder",
    "load_torchvision",
]

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
# data.in_memory = auto streams an ImageFolder whose decoded train/ split would exceed this.
IN_MEMORY_MAX_BYTES = 4 * 2**30
# ImageFolder lists files class by class: the train split is shuffled once with this seed, so
# that its first n images (RankMe's samples) are a random sample, in memory and streamed alike.
IMAGEFOLDER_SHUFFLE_SEED = 0
IDX_NUM_CLASSES = 10  # Fashion-MNIST and MNIST alike
_PARALLEL_DECODE_MIN = 4096


class LabelledImages(Dataset[tuple[torch.Tensor, int]]):
    """Images (N, C, H, W) float32 in [0, 1] held in memory, with integer labels (N,), or
    ``labels=None`` for unlabelled images (their items then carry the label -1)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None) -> None:
        if images.ndim != 4 or (labels is not None and len(images) != len(labels)):
            raise ValueError(f"images (N, C, H, W) and labels (N,) expected, got {images.shape}")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], -1 if self.labels is None else int(self.labels[index])

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

    def part(self, rows: slice) -> StreamedImages:
        """The images at positions ``rows`` of this split (the same folder and workers)."""
        return StreamedImages(self.folder, num_workers=self.num_workers, order=self.order[rows])

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
        batch_sampler: Sampler[list[int]] | None = None,
    ) -> DataLoader:
        """Batches (uint8 images (B, C, size, size), labels (B,)) of the first ``limit``
        images (all by default); ``persistent`` keeps the workers between epochs. ``generator``
        draws the shuffle (torch's global generator by default); the workers' seeds come from a
        private generator, so creating or iterating the loader never consumes the global one.
        A ``batch_sampler`` (:class:`sweeper.data.EpochBatches`) replaces ``batch_size``,
        ``shuffle`` and ``drop_last``: the batches are its index lists."""
        dataset = Subset(self.folder, self.order[:limit])
        workers = self.num_workers
        batching: dict[str, object] = {"batch_sampler": batch_sampler}
        if batch_sampler is None:
            sampler = RandomSampler(dataset, generator=generator) if shuffle else None
            batching = {"batch_size": batch_size, "sampler": sampler, "drop_last": drop_last}
        return DataLoader(
            dataset,
            **batching,  # type: ignore[arg-type]
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=persistent and workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator(),
        )


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset's name, its pretraining/probe-training split and its test split (None: a
    data set with no test split); labels are optional (see :attr:`unlabelled_reason`)."""

    name: str
    train: LabelledImages | StreamedImages
    test: LabelledImages | StreamedImages | None
    num_classes: int | None  # None: no labels
    natural_images: bool  # horizontal flips make sense

    @property
    def channels(self) -> int:
        return self.train.channels

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, StreamedImages)

    @property
    def unlabelled_reason(self) -> str | None:
        """Why the labelled probes cannot run on this data set (None: they can)."""
        if self.train.labels is None:
            return f"data set {self.name!r} has no labels"
        if self.test is None:
            return f"data set {self.name!r} has no test split"
        if self.test.labels is None:
            return f"the test split of data set {self.name!r} has no labels"
        return None


def default_num_workers() -> int:
    """Decoding workers when ``data.num_workers`` is unset: min(4, CPUs - 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


def load_dataset(config: DataConfig) -> DatasetSplits:
    """Load ``config.dataset`` resized to ``config.image_size`` (square), its train split cut to
    ``config.train_per_class`` images per class when set; an ImageFolder tree streams from disk
    when ``config.in_memory`` says so (see :class:`StreamedImages`).

    A data-set plugin (a registered name, an entry point or ``module:factory``) is called as
    ``factory(*, image_size, **data.dataset_args)`` and returns its splits in the public shape
    of :func:`sweeper.data.plugin_splits`: ``(train, test)`` or ``{"train": ..., "test": ...}``,
    each an image tensor, an ``(images, labels)`` pair or a torch ``Dataset``; labels and the
    test split are optional.
    """
    loader = registry.load("dataset", config.dataset)
    if config.builtin:
        return loader(config)
    from sweeper.data._plugin import plugin_splits

    produced = registry.call_with_kwargs(
        loader, f"data.dataset {config.dataset}", image_size=config.image_size, **config.dataset_args
    )
    splits = plugin_splits(produced, name=config.display_name, image_size=config.image_size)
    if config.train_per_class is None:
        return splits
    if splits.train.labels is None:
        raise DataError(
            f"data.train_per_class needs labels, and data set {config.display_name!r} has none: remove it "
            "(or subset the images in the factory)"
        )
    keep = balanced_subset(splits.train.labels, config.train_per_class, seed=config.subset_seed, name=splits.name)
    train = LabelledImages(splits.train.images[keep], splits.train.labels[keep])
    return replace(splits, train=train)


def load_digits(config: DataConfig) -> DatasetSplits:
    """The built-in ``digits`` (scikit-learn's, split 80/20 stratified with a fixed seed)."""
    return _digits(config.image_size, per_class=config.train_per_class, seed=config.subset_seed)


def load_idx(config: DataConfig) -> DatasetSplits:
    """The built-in ``fashion_mnist`` and ``mnist``, from their IDX files under ``root``."""
    return _idx_dataset(config)


def load_imagefolder(config: DataConfig) -> DatasetSplits:
    """The built-in ``imagefolder``: ``root/train/<class>/...`` and ``root/val/<class>/...``."""
    root, workers = _root(config), _workers(config)
    return _imagefolder(
        root,
        config.image_size,
        in_memory=config.in_memory,
        num_workers=workers,
        per_class=config.train_per_class,
        seed=config.subset_seed,
    )


def load_torchvision(config: DataConfig) -> DatasetSplits:
    """The built-in ``cifar10``, ``cifar100`` and ``stl10``, extracted under ``root``."""
    return _torchvision(
        config.dataset,
        _root(config),
        config.image_size,
        num_workers=_workers(config),
        per_class=config.train_per_class,
        seed=config.subset_seed,
    )


def _root(config: DataConfig) -> Path:
    root = Path(config.root).expanduser() if config.root is not None else None
    if root is None or not root.is_dir():
        raise DataError(f"data root {config.root!r} does not exist: set data.root")
    return root


def _workers(config: DataConfig) -> int:
    return config.num_workers if config.num_workers is not None else default_num_workers()


def balanced_subset(
    labels: torch.Tensor | np.ndarray | Sequence[int], per_class: int, *, seed: int, name: str = "the dataset"
) -> torch.Tensor:
    """Sorted indices of ``per_class`` items of every class in ``labels``, drawn at random.

    The first ``per_class`` items of each class along one permutation seeded with ``seed``:
    the same seed gives the same indices, and a smaller ``per_class`` a subset of a larger
    one's. Sorted, the subset keeps the split's order (classes mixed, not one after another).

    Raises:
        DataError: a class has fewer than ``per_class`` items (``name`` says of which dataset).
    """
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled = labels[order]
    picked = []
    for label in torch.unique(labels).tolist():
        members = order[shuffled == label]
        if len(members) < per_class:
            raise DataError(
                f"data.train_per_class {per_class}: class {label} of {name} has only {len(members)} "
                "training images; lower it or set it to null (all)"
            )
        picked.append(members[:per_class])
    return torch.cat(picked).sort().values


def _train_indices(
    labels: torch.Tensor | np.ndarray | Sequence[int], per_class: int | None, *, seed: int, name: str
) -> torch.Tensor | None:
    return None if per_class is None else balanced_subset(labels, per_class, seed=seed, name=name)


def _idx_dataset(config: DataConfig) -> DatasetSplits:
    """Fashion-MNIST or MNIST from its IDX files (see ``DataConfig.idx_files``); grayscale
    28×28 resized to ``config.image_size``. Fashion-MNIST counts as natural images (flips on):
    a mirrored garment is a garment of the same class, a mirrored digit is not a digit."""
    files = config.idx_files()
    if files is None:  # the config checked it at load; the root may have changed since
        raise DataError(config.missing_idx_message())
    train_images, train_labels = read_idx_split(*files["train"], num_classes=IDX_NUM_CLASSES)
    test_images, test_labels = read_idx_split(*files["test"], num_classes=IDX_NUM_CLASSES)
    keep = _train_indices(train_labels, config.train_per_class, seed=config.subset_seed, name=config.dataset)
    if keep is not None:
        train_images, train_labels = train_images[keep.numpy()], train_labels[keep.numpy()]
    return DatasetSplits(
        name=config.dataset,
        train=_grayscale(train_images, train_labels, config.image_size),
        test=_grayscale(test_images, test_labels, config.image_size),
        num_classes=IDX_NUM_CLASSES,
        natural_images=config.dataset == "fashion_mnist",
    )


def _grayscale(pixels: np.ndarray, labels: np.ndarray, size: int) -> LabelledImages:
    """uint8 (N, H, W) pixels as one-channel float images in [0, 1] at ``size``."""
    images = torch.from_numpy(np.array(pixels)).unsqueeze(1).float().div_(255)
    return LabelledImages(_resize(images, size), torch.from_numpy(np.array(labels, dtype=np.int64)))


def _digits(size: int, *, per_class: int | None, seed: int) -> DatasetSplits:
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
    keep = _train_indices(labels[train_idx], per_class, seed=seed, name="digits")
    if keep is not None:
        train_idx = train_idx[keep.numpy()]
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


def _imagefolder(
    root: Path, size: int, *, in_memory: bool | str, num_workers: int, per_class: int | None, seed: int
) -> DatasetSplits:
    from torchvision.datasets import ImageFolder

    missing = [split for split in ("train", "val") if not (root / split).is_dir()]
    if missing:
        raise DataError(
            f"imagefolder root {str(root)!r} has no {missing[0]}/ directory: "
            "it needs train/<class>/... and val/<class>/..."
        )
    train = ImageFolder(str(root / "train"), transform=_transform(size))
    test = ImageFolder(str(root / "val"), transform=_transform(size))
    if train.classes != test.classes:
        raise ValueError(f"imagefolder {root}: train/ and val/ must hold the same class folders")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(IMAGEFOLDER_SHUFFLE_SEED)).tolist()
    keep = _train_indices(np.asarray(train.targets)[order], per_class, seed=seed, name=root.name)
    if keep is not None:
        order = [order[i] for i in keep.tolist()]
    in_memory_bytes = len(order) * 3 * size * size * 4
    if in_memory == "auto":
        in_memory = in_memory_bytes <= IN_MEMORY_MAX_BYTES
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


def _torchvision(
    name: str, root: Path, size: int, *, num_workers: int, per_class: int | None, seed: int
) -> DatasetSplits:
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
        raise DataError(f"{name} not found under {str(root)!r} ({exc}); put the extracted dataset there") from None
    labels = train.labels if name == "stl10" else train.targets
    keep = _train_indices(labels, per_class, seed=seed, name=name)
    if keep is not None:
        train = Subset(train, keep.tolist())
    return DatasetSplits(
        name=name,
        train=_stack(train, size, num_workers=num_workers),
        test=_stack(test, size, num_workers=num_workers),
        num_classes=classes,
        natural_images=True,
    )
