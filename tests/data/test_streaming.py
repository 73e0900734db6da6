"""Streaming ImageFolder trees through DataLoader workers: the same pixels and labels as the
in-memory path, every image once per training epoch, and the same evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sweeper.data.datasets as datasets
from sweeper.config import DataConfig, load_config
from sweeper.data import LabelledImages, StreamedImages, load_dataset
from sweeper.engine import Trainer

IMAGES = 40


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and val/ of 40 distinct 20×24 RGB digit PNGs each, in 4 class folders."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("folder")
    digits = load_digits()
    rng = np.random.default_rng(0)
    for split, offset in (("train", 0), ("val", IMAGES)):
        for i in range(IMAGES):
            image, label = digits.images[offset + i], digits.target[offset + i]
            rgb = np.stack([image * 15, image[::-1] * 15, rng.integers(0, 40, (8, 8))], axis=-1)
            directory = root / split / f"class{label % 4}"
            directory.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb.astype(np.uint8)).resize((20, 24)).save(directory / f"{i}.png")
    return root


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(folder: Path, in_memory: bool | str, num_workers: int = 1) -> DataConfig:
    return DataConfig(dataset="imagefolder", root=folder, image_size=12, in_memory=in_memory, num_workers=num_workers)


def test_streamed_split_has_the_in_memory_pixels_and_labels(folder: Path) -> None:
    memory = load_dataset(_data(folder, True))
    streamed = load_dataset(_data(folder, False))
    assert isinstance(memory.train, LabelledImages) and not memory.streamed
    assert isinstance(streamed.train, StreamedImages) and streamed.streamed
    assert (len(streamed.train), len(streamed.test), streamed.channels, streamed.num_classes) == (IMAGES, IMAGES, 3, 4)
    for name in ("train", "test"):
        stream, tensor = getattr(streamed, name), getattr(memory, name)
        batches = list(stream.loader(16))
        assert [len(labels) for _, labels in batches] == [16, 16, 8]
        images = torch.cat([images for images, _ in batches])
        assert images.dtype == torch.uint8 and images.shape == (IMAGES, 3, 12, 12)
        assert torch.equal(images.float() / 255, tensor.images)
        assert torch.equal(torch.cat([labels for _, labels in batches]), tensor.labels)
        assert torch.equal(stream.labels, tensor.labels)
    # the train split is shuffled once (ImageFolder lists class by class), the same way for both
    assert not torch.equal(memory.train.labels, memory.train.labels.sort().values)
    first = next(iter(streamed.train.loader(8, limit=8)))[0]
    assert torch.equal(first.float() / 255, memory.train.images[:8])


def test_auto_streams_only_folders_too_large_for_memory(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not load_dataset(_data(folder, "auto")).streamed
    monkeypatch.setattr(datasets, "IN_MEMORY_MAX_BYTES", IMAGES * 3 * 12 * 12 * 4 - 1)
    assert load_dataset(_data(folder, "auto")).streamed


def test_streaming_is_for_image_folders() -> None:
    with pytest.raises(ValueError, match="in_memory: false"):
        DataConfig(dataset="digits", in_memory=False)


def _config(folder: Path, in_memory: bool, *, num_workers: int = 2, epochs: int = 1):
    return load_config(
        data={
            "name": "streaming",
            "data": {"dataset": "imagefolder", "root": str(folder), "image_size": 12, "in_memory": in_memory},
            "model": {"projector": [32, 16]},
            "train": {"epochs": epochs, "batch_size": 8, "warmup_epochs": 0},
            "evaluation": {"every_n_epochs": 1, "rankme_samples": 32, "oracle": ["knn"], "knn_k": 5},
            "selection": {"rule": "max"},
        },
        overrides={"data.num_workers": num_workers},
    )


def test_streamed_epoch_sees_every_image_once_and_evaluates_as_in_memory(folder: Path) -> None:
    streaming = Trainer(_config(folder, False), device="cpu")
    memory = Trainer(_config(folder, True), device="cpu")
    assert streaming.train_images is None and streaming.train_loader is not None
    assert streaming.train_loader.num_workers == 2 and streaming.train_loader.persistent_workers
    assert streaming.steps_per_epoch == memory.steps_per_epoch == IMAGES // 8

    batches: list[torch.Tensor] = []
    augment = streaming.augment.forward
    streaming.augment.forward = lambda images: batches.append(images.clone()) or augment(images)
    (result,) = list(streaming.epochs())
    assert result.status == "ok"
    seen = torch.cat(batches)
    assert seen.dtype == torch.float32 and seen.shape == (IMAGES, 3, 12, 12)
    reference = memory.data.train.images.flatten(1)
    matches = (seen.flatten(1)[:, None, :] == reference[None, :, :]).all(dim=2)
    assert matches.sum(dim=1).eq(1).all() and matches.sum(dim=0).eq(1).all()  # each image exactly once

    # The same weights give the same label-free and oracle metrics through either path.
    memory.method.load_state_dict(streaming.method.state_dict())
    expected = memory.evaluator.label_free() | memory.evaluator.oracle()
    for key in ("rankme/embedding", "rankme/representation", f"oracle/knn/{folder.name}"):
        assert result.metrics[key] == pytest.approx(expected[key], rel=1e-6), key
    assert streaming.evaluator.embedding_spectrum() == pytest.approx(memory.evaluator.embedding_spectrum(), rel=1e-5)


def test_streamed_training_resumes_exactly(folder: Path) -> None:
    config = _config(folder, False, num_workers=1, epochs=2).with_overrides({"evaluation.oracle": []})
    straight = [r.metrics["train/loss"] for r in Trainer(config, device="cpu").epochs()]
    first = Trainer(config, device="cpu")
    head = next(first.epochs()).metrics["train/loss"]
    state = first.state_dict()  # before the next Trainer reseeds the global RNG
    resumed = Trainer(config, device="cpu")
    resumed.load_state_dict(state)
    tail = [r.metrics["train/loss"] for r in resumed.epochs()]
    assert [head, *tail] == straight
    assert straight[0] != straight[1]
