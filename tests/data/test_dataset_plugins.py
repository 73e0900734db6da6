"""Data-set plugins: a factory's return value in every documented shape, read into splits
(checked against an independent resize), labels optional everywhere (no oracle, never invented
classes), the config's checks, and the engine on unlabelled data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from sweeper import registry
from sweeper.config import ConfigError, DataConfig, load_config
from sweeper.data import load_dataset, plugin_splits
from sweeper.engine import Trainer
from sweeper.errors import DataError
from sweeper.names import ORACLE_SKIPPED, RANKME_EMBEDDING

MODULE = __name__  # as pytest imported this file: the import path the plugin targets use


def _digits(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Real 8×8 digits as uint8 (N, 1, 8, 8) and their labels."""
    splits = load_dataset(DataConfig(image_size=8))
    images = (splits.train.images[:n] * 255).round().to(torch.uint8)
    return images, splits.train.labels[:n]


def unlabelled(*, image_size: int, count: int = 300) -> dict[str, torch.Tensor]:
    """A factory: digits without labels and without a test split."""
    images, _ = _digits(count)
    return {"train": images}


def labelled(*, image_size: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    images, labels = _digits(400)
    return (images[:300], labels[:300]), (images[300:], labels[300:])


def labels_without_test(*, image_size: int) -> tuple[tuple[torch.Tensor, torch.Tensor], None]:
    images, labels = _digits(300)
    return (images, labels), None


registry.register_dataset("test_unlabelled_digits", unlabelled)


def _config(dataset: str, **data: object):
    return load_config(
        data={
            "name": "plugin-data",
            "data": {"dataset": dataset, "image_size": 8, **data},
            "model": {"projector": [32, 16]},
            "train": {"epochs": 2, "batch_size": 64, "warmup_epochs": 0},
            "evaluation": {"every_n_epochs": 1, "rankme_samples": 256, "linear_epochs": 5},
            "selection": {"rule": "max"},
        }
    )


def test_a_tensor_pair_is_resized_exactly_as_an_independent_interpolation() -> None:
    images = torch.rand(20, 3, 12, 12)
    labels = torch.arange(20) % 4
    splits = plugin_splits(((images, labels), (images[:5], labels[:5])), name="x", image_size=8)
    expected = F.interpolate(images, size=(8, 8), mode="bilinear", antialias=True).clamp(0, 1)
    torch.testing.assert_close(splits.train.images, expected)
    assert torch.equal(splits.train.labels, labels) and splits.num_classes == 4
    assert splits.unlabelled_reason is None and splits.channels == 3


def test_uint8_arrays_grey_images_and_a_mapping_without_test() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(10, 8, 8), dtype=np.uint8)
    splits = plugin_splits({"train": pixels}, name="grey", image_size=8)
    torch.testing.assert_close(splits.train.images, torch.from_numpy(pixels).float().unsqueeze(1) / 255)
    assert splits.train.labels is None and splits.test is None and splits.num_classes is None
    assert splits.unlabelled_reason == "data set 'grey' has no labels"


def test_a_torch_dataset_of_images_or_pairs() -> None:
    images, labels = torch.rand(30, 1, 8, 8), torch.arange(30) % 3
    pairs = plugin_splits((TensorDataset(images, labels), None), name="pairs", image_size=8)
    torch.testing.assert_close(pairs.train.images, images)
    assert torch.equal(pairs.train.labels, labels)
    assert pairs.unlabelled_reason == "data set 'pairs' has no test split"

    class Images(Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, index: int) -> torch.Tensor:
            return images[index]

    only_images = plugin_splits((Images(), Images()), name="images", image_size=8)
    torch.testing.assert_close(only_images.test.images, images)
    assert only_images.train.labels is None


@pytest.mark.parametrize(
    ("produced", "message"),
    [
        ([torch.rand(4, 1, 8, 8)], "return (train, test)"),
        ({"test": torch.rand(4, 1, 8, 8)}, "it needs 'train'"),
        ({"train": torch.rand(4, 1, 8, 8), "val": None}, "it needs 'train'"),
        ((torch.rand(4, 1, 8, 8) * 3, None), "must lie in [0, 1]"),
        ((torch.rand(4, 8), None), "(N, C, H, W)"),
        (((torch.rand(4, 1, 8, 8), torch.rand(4)), None), "integer class indices"),
        (((torch.rand(4, 1, 8, 8), torch.arange(3)), None), "N = 4 images"),
        ((torch.rand(4, 1, 8, 8), torch.rand(4, 3, 8, 8)), "channels"),
    ],
)
def test_a_wrong_shape_is_one_data_error(produced, message) -> None:
    with pytest.raises(DataError, match=f"data set 'x'.*{__import__('re').escape(message)}"):
        plugin_splits(produced, name="x", image_size=8)


def test_a_plugin_by_registered_name_and_by_import_path_with_its_arguments() -> None:
    by_name = _config("test_unlabelled_digits", dataset_args={"count": 200})
    assert by_name.data.dataset == f"{MODULE}:unlabelled"  # the canonical target is saved
    assert by_name.data.display_name == "unlabelled"
    assert len(load_dataset(by_name.data).train) == 200
    by_path = _config(f"{MODULE}:labelled", train_per_class=5)
    splits = load_dataset(by_path.data)
    counts = torch.bincount(splits.train.labels)
    assert counts[counts > 0].tolist() == [5] * 10  # a balanced subset of the plugin's labels


def test_the_config_refuses_what_does_not_fit_a_plugin() -> None:
    with pytest.raises(ConfigError, match="data.root is for the built-in data sets"):
        _config(f"{MODULE}:unlabelled", root="/tmp")
    with pytest.raises(ConfigError, match="takes none"):
        _config("digits", dataset_args={"count": 3})
    with pytest.raises(ConfigError, match="unknown dataset 'test_unlabeled_digits'.*did you mean"):
        _config("test_unlabeled_digits")
    with pytest.raises(DataError, match="needs labels"):
        load_dataset(_config(f"{MODULE}:unlabelled", train_per_class=5).data)
    with pytest.raises(ConfigError, match="unexpected keyword argument 'size'"):
        load_dataset(_config(f"{MODULE}:unlabelled", dataset_args={"size": 3}).data)


@pytest.mark.parametrize(
    ("factory", "reason"),
    [
        ("unlabelled", "data set 'unlabelled' has no labels"),
        ("labels_without_test", "data set 'labels_without_test' has no test split"),
    ],
)
def test_without_labels_the_engine_skips_the_oracle_and_says_why(factory, reason, one_thread) -> None:
    trainer = Trainer(_config(f"{MODULE}:{factory}"), device="cpu")
    results = list(trainer.epochs())
    final = results[-1]
    assert final.status == "ok" and math.isfinite(final.metrics[RANKME_EMBEDDING])
    assert not [key for key in final.metrics if key.startswith("oracle/")]
    assert final.oracle_skipped == f"{reason}: the labelled probes are skipped"


def test_with_labels_and_a_test_split_the_oracle_runs_under_the_factory_name(one_thread) -> None:
    trainer = Trainer(_config(f"{MODULE}:labelled"), device="cpu")
    final = list(trainer.epochs())[-1]
    assert final.oracle_skipped is None
    assert 0.0 <= final.metrics["oracle/linear/labelled"] <= 1.0
    assert ORACLE_SKIPPED == "oracle_skipped"
