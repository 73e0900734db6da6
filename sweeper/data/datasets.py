"""Builtin ``digits``, CIFAR-10/100 and STL-10 from a local root, and ImageFolder trees.

Nothing is ever downloaded: every dataset but ``digits`` (scikit-learn's 1 797 real 8×8
handwritten digits, shipped with scikit-learn) is read from ``data.root``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sweeper.config import DataConfig

__all__ = ["DatasetSplits", "LabelledImages", "load_dataset"]

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


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


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset's name, its pretraining/probe-training split and its test split."""

    name: str
    train: LabelledImages
    test: LabelledImages
    num_classes: int
    natural_images: bool  # horizontal flips make sense

    @property
    def channels(self) -> int:
        return self.train.channels


def load_dataset(config: DataConfig) -> DatasetSplits:
    """Load ``config.dataset`` resized to ``config.image_size`` (square)."""
    size = config.image_size
    if config.dataset == "digits":
        return _digits(size)
    root = Path(config.root).expanduser() if config.root is not None else None
    if root is None or not root.is_dir():
        raise FileNotFoundError(f"data root {config.root!r} does not exist: set data.root")
    if config.dataset == "imagefolder":
        return _imagefolder(root, size)
    return _torchvision(config.dataset, root, size)


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


def _stack(dataset: Dataset, size: int) -> LabelledImages:
    """Decode a torchvision dataset once into an in-memory tensor at ``size``."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=512, num_workers=0)
    images, labels = [], []
    for batch, target in loader:
        images.append(_resize(batch, size))
        labels.append(torch.as_tensor(target))
    return LabelledImages(torch.cat(images), torch.cat(labels).long())


def _transform(size: int):  # noqa: ANN202 - torchvision transform
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])


def _imagefolder(root: Path, size: int) -> DatasetSplits:
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
    return DatasetSplits(
        name=root.name,
        train=_stack(train, size),
        test=_stack(test, size),
        num_classes=len(train.classes),
        natural_images=True,
    )


def _torchvision(name: str, root: Path, size: int) -> DatasetSplits:
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
        train=_stack(train, size),
        test=_stack(test, size),
        num_classes=classes,
        natural_images=True,
    )
