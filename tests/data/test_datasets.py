"""Datasets: builtin digits, ImageFolder trees, and missing roots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sweeper.config import DataConfig
from sweeper.data import MultiViewAugment, load_dataset


def test_digits_is_the_real_dataset_split_stratified() -> None:
    from sklearn.datasets import load_digits

    splits = load_dataset(DataConfig(dataset="digits", image_size=8))
    assert len(splits.train) + len(splits.test) == len(load_digits().target) == 1797
    assert splits.train.images.shape[1:] == (1, 8, 8)
    # At native size the pixels are the dataset's own (scaled to [0, 1]).
    raw = {tuple(np.round(img.ravel() / 16.0, 6)) for img in load_digits().images}
    assert tuple(np.round(splits.test.images[0, 0].numpy().ravel(), 6)) in raw
    train_counts = torch.bincount(splits.train.labels, minlength=10).float()
    test_counts = torch.bincount(splits.test.labels, minlength=10).float()
    assert torch.allclose(test_counts / train_counts, torch.full((10,), 0.25), atol=0.02)


def test_digits_resized_and_deterministic() -> None:
    a = load_dataset(DataConfig(image_size=16))
    b = load_dataset(DataConfig(image_size=16))
    assert a.train.images.shape[1:] == (1, 16, 16)
    assert torch.equal(a.train.labels, b.train.labels)
    assert 0.0 <= float(a.train.images.min()) and float(a.train.images.max()) <= 1.0


def _imagefolder(root: Path, splits=("train", "val")) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for split in splits:
        for i, (image, label) in enumerate(zip(digits.images[:40], digits.target[:40], strict=True)):
            folder = root / split / f"class{label % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            rgb = np.repeat((image * 15).astype(np.uint8)[..., None], 3, axis=2)
            Image.fromarray(rgb).resize((24, 24)).save(folder / f"{i}.png")


def test_imagefolder_tree(tmp_path: Path) -> None:
    _imagefolder(tmp_path)
    splits = load_dataset(DataConfig(dataset="imagefolder", root=tmp_path, image_size=16))
    assert splits.num_classes == 3
    assert splits.train.images.shape == (40, 3, 16, 16)
    assert splits.natural_images


def test_imagefolder_without_val_is_a_clear_error(tmp_path: Path) -> None:
    _imagefolder(tmp_path, splits=("train",))
    with pytest.raises(FileNotFoundError, match="no val/ directory"):
        load_dataset(DataConfig(dataset="imagefolder", root=tmp_path, image_size=16))


def test_cifar_root_without_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar10 not found"):
        load_dataset(DataConfig(dataset="cifar10", root=tmp_path, image_size=16))


def test_views_differ_but_keep_shape_and_range() -> None:
    torch.manual_seed(0)
    images = load_dataset(DataConfig(image_size=16)).train.images[:64]
    augment = MultiViewAugment(flip=False)
    a, b = (augment.view(images) for _ in range(2))
    assert a.shape == images.shape
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.allclose(a, b)
    # Views still resemble their source image more than another image.
    same = torch.nn.functional.cosine_similarity(a.flatten(1), images.flatten(1)).mean()
    other = torch.nn.functional.cosine_similarity(a.flatten(1), images.roll(1, 0).flatten(1)).mean()
    assert same > other


def test_digits_train_per_class_is_a_balanced_seeded_subset() -> None:
    full = load_dataset(DataConfig(image_size=8))
    subset = load_dataset(DataConfig(image_size=8, train_per_class=20))
    again = load_dataset(DataConfig(image_size=8, train_per_class=20))
    other = load_dataset(DataConfig(image_size=8, train_per_class=20, subset_seed=1))
    assert torch.equal(torch.bincount(subset.train.labels), torch.full((10,), 20))
    assert torch.equal(subset.train.images, again.train.images)
    assert not torch.equal(subset.train.images, other.train.images)
    assert torch.equal(subset.test.images, full.test.images)  # the test split stays whole
    # Every kept image is one of the full train split's, each at most once.
    rows = {tuple(image.flatten().tolist()): i for i, image in enumerate(full.train.images)}
    kept = [rows[tuple(image.flatten().tolist())] for image in subset.train.images]
    assert len(set(kept)) == 200 and kept == sorted(kept)


@pytest.mark.parametrize("in_memory", [True, False])
def test_imagefolder_train_per_class(tmp_path: Path, in_memory: bool) -> None:
    _imagefolder(tmp_path)
    config = DataConfig(dataset="imagefolder", root=tmp_path, image_size=16, in_memory=in_memory, num_workers=0)
    full = load_dataset(config.model_copy(update={"train_per_class": None}))
    subset = load_dataset(config.model_copy(update={"train_per_class": 5}))
    assert torch.equal(torch.bincount(subset.train.labels), torch.full((3,), 5))
    assert len(subset.test) == len(full.test) == 40
    if not in_memory:
        assert set(subset.train.order) <= set(full.train.order) and len(set(subset.train.order)) == 15
