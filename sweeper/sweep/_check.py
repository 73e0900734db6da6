"""Checks of what a sweep is built from, before anything is written: data roots on the machine
that trains."""

from __future__ import annotations

import os
from pathlib import Path

from sweeper.config import DataConfig
from sweeper.errors import DataError

# What torchvision's loaders open under data.root (the files of the extracted archives).
_DATASET_FILES = {
    "cifar10": [f"cifar-10-batches-py/{name}" for name in ("data_batch_1", "data_batch_5", "test_batch")],
    "cifar100": ["cifar-100-python/train", "cifar-100-python/test"],
    "stl10": [f"stl10_binary/{name}" for name in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")],
}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def check_data_root(data: DataConfig) -> None:
    """A built-in data set's ``data.root`` must have the shape its loader reads (every trial
    would fail on it otherwise): the IDX files of Fashion-MNIST/MNIST; ImageFolder's ``train/``
    and ``val/`` with the same class folders, each holding an image; the files of an extracted
    CIFAR/STL archive. The images themselves are not read. A saved sweep's config is read
    without these checks (:func:`sweeper.sweep.load_sweep_config`): they run here, on the
    machine that trains, before anything is written."""
    problem = data.root_problem(key="data.root")
    if problem is not None:
        raise DataError(problem)
    if data.root is None or data.dataset not in {"imagefolder", *_DATASET_FILES}:
        return
    root = Path(data.root)
    where = f"data.root {str(root)!r}"
    if data.dataset != "imagefolder":
        missing = [name for name in _DATASET_FILES[data.dataset] if not (root / name).is_file()]
        if missing:
            raise DataError(f"{where} has no {missing[0]}: put the extracted {data.dataset} data set there")
        return
    classes: dict[str, list[str]] = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise DataError(
                f"{where} has no {split}/ directory: an imagefolder root needs train/<class>/... and val/<class>/..."
            )
        classes[split] = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
        empty = next((name for name in classes[split] if not _holds_an_image(folder / name)), None)
        if not classes[split] or empty is not None:
            what = f"{split}/{empty}/ holds no image" if empty else f"{split}/ holds no class folder"
            raise DataError(
                f"{where}: {what} ({', '.join(_IMAGE_SUFFIXES)}): an imagefolder root needs {split}/<class>/<image>"
            )
    if classes["train"] != classes["val"]:
        raise DataError(f"{where}: train/ and val/ must hold the same class folders")


def _holds_an_image(folder: Path) -> bool:
    return any(
        entry.is_file() and entry.name.lower().endswith(_IMAGE_SUFFIXES) for entry in os.scandir(folder)
    )  # stops at the first image: a class folder of ImageNet is not listed whole
