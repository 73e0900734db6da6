"""OOD oracle through the trainer: the probes on ``evaluation.oracle_datasets`` with the frozen
backbone, from image folders (the Evaluator alone: tests/test_evaluation.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sweeper.engine as engine
import sweeper.evaluation as evaluation
from sweeper.config import load_config
from sweeper.engine import Trainer

TINY = {
    "name": "engine-ood-test",
    "data": {"image_size": 8},
    "model": {"projector": [32, 16]},
    "train": {"epochs": 1, "batch_size": 128, "warmup_epochs": 0},
    "evaluation": {"every_n_epochs": 1, "rankme_samples": 300, "linear_epochs": 5},
    "search": {"space": {"method.params.cov_weight": {"values": [1.0]}}},
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _digits_variant(root: Path, transform, *, per_split: int = 60) -> Path:
    """An ImageFolder tree ``root/{train,val}/<digit>/<i>.png`` of transformed digits, RGB."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255).astype(np.uint8)
    for split, offset in (("train", 0), ("val", per_split)):
        for i in range(offset, offset + per_split):
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            rgb = np.repeat(transform(images[i])[..., None], 3, axis=2)
            Image.fromarray(rgb).resize((12, 12)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def ood_roots(tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("ood")
    return [
        _digits_variant(base / "inverted", lambda image: 255 - image),
        _digits_variant(base / "rotated", lambda image: np.ascontiguousarray(np.rot90(image))),
    ]


def _config(ood_roots: list[Path], **data):
    evaluation = {
        **TINY["evaluation"],
        "oracle_datasets": [{"dataset": "imagefolder", "root": str(root), "image_size": 16} for root in ood_roots],
    }
    return load_config(data={**TINY, "evaluation": evaluation, **data})


def test_oracle_datasets_are_probed_and_averaged(ood_roots, monkeypatch) -> None:
    calls: list[str] = []
    original = engine.load_dataset

    def counting(config):
        calls.append(config.dataset)
        return original(config)

    monkeypatch.setattr(engine, "load_dataset", counting)
    monkeypatch.setattr(evaluation, "load_dataset", counting)
    trainer = Trainer(_config(ood_roots))
    final = list(trainer.epochs())[-1]
    assert final.status == "ok"
    metrics = final.metrics
    names = ("digits", "inverted", "rotated")
    keys = [f"oracle/{probe}/{name}" for probe in ("linear", "knn") for name in names]
    for key in [*keys, "oracle/linear/ood_mean"]:
        assert key in metrics, key
        assert 0.0 <= metrics[key] <= 1.0 and math.isfinite(metrics[key]), key
    assert metrics["oracle/linear/ood_mean"] == pytest.approx(
        (metrics["oracle/linear/inverted"] + metrics["oracle/linear/rotated"]) / 2
    )
    assert "oracle/knn/ood_mean" not in metrics  # the contract names the linear mean only
    # Loaded once, converted to the backbone's one channel at data.image_size, then cached.
    assert calls == ["digits", "imagefolder", "imagefolder"]
    for splits in trainer.evaluator.ood_splits:
        assert splits.train.images.shape[1:] == (1, 8, 8)
        assert len(splits.train) == len(splits.test) == 60
    trainer.evaluator.oracle()
    assert calls == ["digits", "imagefolder", "imagefolder"]


def test_without_oracle_datasets_there_is_no_ood_mean() -> None:
    trainer = Trainer(load_config(data={**TINY, "evaluation": {**TINY["evaluation"], "oracle": ["knn"]}}))
    metrics = trainer.evaluator.oracle()
    assert set(metrics) == {"oracle/knn/digits", "time/oracle_s"}


def test_rgb_backbone_probes_grey_digits_and_names_are_unique(ood_roots) -> None:
    # ID: an RGB ImageFolder (3-channel backbone); OOD: the 1-channel digits, and a second tree
    # with the same folder name as the first.
    twin = _digits_variant(ood_roots[0].parent / "twin" / "inverted", lambda image: image)
    data = {**TINY, "data": {"dataset": "imagefolder", "root": str(ood_roots[0]), "image_size": 8}}
    data["evaluation"] = {
        **TINY["evaluation"],
        "oracle": ["linear"],
        "oracle_datasets": [
            {"dataset": "digits", "image_size": 8},
            {"dataset": "imagefolder", "root": str(twin)},
        ],
    }
    trainer = Trainer(load_config(data=data))
    assert trainer.data.channels == 3
    metrics = trainer.evaluator.oracle()
    assert {k for k in metrics if k.startswith("oracle/")} == {
        "oracle/linear/inverted",
        "oracle/linear/digits",
        "oracle/linear/inverted-2",
        "oracle/linear/ood_mean",
    }
    digits = trainer.evaluator.ood_splits[0].train.images
    assert digits.shape[1] == 3 and torch.equal(digits[:, 0], digits[:, 2])
