"""Datasets (image tensors, labels optional) and the batched multi-view augmentation.

Every dataset comes as a split pair: :class:`LabelledImages`, images already resized to
``data.image_size`` as float tensors in [0, 1], or, for ImageFolder trees too large for memory,
:class:`StreamedImages` decoded by DataLoader workers; labels are kept aside for the oracle
probes only. Fashion-MNIST and MNIST are read from their IDX files (:func:`read_idx`), never
downloaded; ``data.train_per_class`` keeps a class-balanced subset (:func:`balanced_subset`).
A data-set plugin's factory may return images without labels, and no test split
(:func:`plugin_splits` reads what it returns); then the oracle is skipped, never invented.
Augmentation runs on whole batches on the training device (:class:`MultiViewAugment`).
:class:`EpochBatches` draws each epoch's batches from the seed and the epoch alone, and shares
every global batch out between the processes of a data-parallel trial.
"""

from sweeper.data._idx import read_idx
from sweeper.data._plugin import plugin_splits
from sweeper.data._sampler import EpochBatches
from sweeper.data.augment import MultiViewAugment
from sweeper.data.datasets import DatasetSplits, LabelledImages, StreamedImages, balanced_subset, load_dataset

__all__ = [
    "DatasetSplits",
    "EpochBatches",
    "LabelledImages",
    "MultiViewAugment",
    "StreamedImages",
    "balanced_subset",
    "load_dataset",
    "plugin_splits",
    "read_idx",
]
