"""Datasets (labelled image tensors) and the batched multi-view augmentation.

Every dataset comes as a split pair: :class:`LabelledImages`, images already resized to
``data.image_size`` as float tensors in [0, 1], or, for ImageFolder trees too large for memory,
:class:`StreamedImages` decoded by DataLoader workers; labels are kept aside for the oracle
probes only. Augmentation runs on whole batches on the training device (:class:`MultiViewAugment`).
"""

from sweeper.data.augment import MultiViewAugment
from sweeper.data.datasets import DatasetSplits, LabelledImages, StreamedImages, load_dataset

__all__ = ["DatasetSplits", "LabelledImages", "MultiViewAugment", "StreamedImages", "load_dataset"]
