"""Datasets (labelled image tensors) and the batched multi-view augmentation.

Every dataset comes as a :class:`LabelledImages` split pair: images already resized to
``data.image_size`` as float tensors in [0, 1], labels kept aside for the oracle probes only.
Augmentation runs on whole batches on the training device (:class:`MultiViewAugment`).
"""

from sweeper.data.augment import MultiViewAugment
from sweeper.data.datasets import DatasetSplits, LabelledImages, load_dataset

__all__ = ["DatasetSplits", "LabelledImages", "MultiViewAugment", "load_dataset"]
