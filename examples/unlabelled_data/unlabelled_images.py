"""A data-set plugin: Fashion-MNIST training images as an unlabelled collection.

It stands for the usual case of self-supervised pretraining, a pile of images and no labels:
only the image file is read (never the label file), and there is no test split. sweeper then
skips the labelled oracle probes, says why in every trial (``oracle_skipped``) and in the
report, and still picks by RankMe.

The config lists this module under ``plugins:``; sweeper finds it beside the config and imports
it on the driver and in every trial, so ``data.dataset: unlabelled_fashion`` means the same
everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sweeper import ConfigError, register_dataset
from sweeper.data import read_idx
from sweeper.errors import DataError

__all__ = ["unlabelled_fashion"]

IMAGES = "train-images-idx3-ubyte"


@register_dataset("unlabelled_fashion")
def unlabelled_fashion(*, image_size: int, root: str, num_images: int = 3000, seed: int = 0) -> dict[str, torch.Tensor]:
    """``num_images`` Fashion-MNIST training images drawn at random (``seed``), without labels.

    Args:
        image_size: ``data.image_size``; sweeper resizes the 28×28 images to it.
        root: The directory of the IDX files (``train-images-idx3-ubyte``, gzipped or not).
        num_images: How many images to keep, all classes mixed (a pile has no classes to balance).
        seed: Which images: the same seed gives the same images to every trial.

    Returns:
        ``{"train": images}``, uint8 (N, 1, 28, 28); no labels, no test split.
    """
    directory = Path(root).expanduser()
    candidates = [directory / name for name in (IMAGES, f"{IMAGES}.gz")]
    path = next((candidate for candidate in candidates if candidate.is_file()), None)
    if path is None:
        raise DataError(f"data.dataset_args.root: no {IMAGES}[.gz] in {directory}")
    pixels = read_idx(path, ndim=3)
    if not 0 < num_images <= len(pixels):
        raise ConfigError(f"data.dataset_args.num_images: {num_images} is not in 1..{len(pixels)}")
    keep = np.sort(np.random.default_rng(seed).choice(len(pixels), size=num_images, replace=False))
    return {"train": torch.from_numpy(pixels[keep]).unsqueeze(1)}
