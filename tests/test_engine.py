"""The training loop: metrics, exact resume, divergence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sweeper.config import load_config
from sweeper.data import load_dataset
from sweeper.data.augment import normalize
from sweeper.engine import Trainer

TINY = {
    "name": "engine-test",
    "data": {"image_size": 8},
    "model": {"projector": [32, 16]},
    "train": {"epochs": 3, "batch_size": 128, "warmup_epochs": 1},
    "evaluation": {"every_n_epochs": 2, "rankme_samples": 500},
    "search": {"space": {"method.params.cov_weight": {"values": [1.0]}}},
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset(load_config(data=TINY).data)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rankme_float64(z: np.ndarray) -> float:
    s = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


def test_epochs_report_contract_metrics_and_rankme_is_exact(digits) -> None:
    trainer = Trainer(load_config(data=TINY), data=digits)
    results = list(trainer.epochs())
    assert [r.epoch for r in results] == [1, 2, 3]
    assert [r.status for r in results] == ["running", "running", "ok"]
    assert [r.evaluated for r in results] == [False, True, True]
    assert "rankme/embedding" not in results[0].metrics
    final = results[-1].metrics
    for key in (
        "train/loss",
        "rankme/embedding",
        "rankme/representation",
        "oracle/linear/digits",
        "oracle/knn/digits",
    ):
        assert math.isfinite(final[key]), key
    assert 0.1 < final["oracle/linear/digits"] <= 1.0

    # RankMe equals an independent float64 SVD of the same embeddings to 1e-6.
    samples = normalize(digits.train.images[:500])
    representation, embedding = trainer.method.embed(samples)
    assert final["rankme/embedding"] == pytest.approx(_rankme_float64(embedding.numpy()), rel=1e-6)
    assert final["rankme/representation"] == pytest.approx(_rankme_float64(representation.numpy()), rel=1e-6)
    assert final["rankme/embedding_clipped"] == min(final["rankme/embedding"], 128.0)


def test_resume_from_state_dict_continues_exactly(digits) -> None:
    config = load_config(data=TINY)
    straight = [r.metrics["train/loss"] for r in Trainer(config, data=digits).epochs()]

    first = Trainer(config, data=digits)
    epochs = first.epochs()
    head = [next(epochs).metrics["train/loss"]]
    state = first.state_dict()
    assert state["config"] == config.to_dict() and state["epoch"] == 1

    torch.manual_seed(12345)  # the checkpoint must restore the RNG, not rely on it
    second = Trainer(config, data=digits)
    second.load_state_dict(state)
    tail = [r.metrics["train/loss"] for r in second.epochs()]
    assert head + tail == pytest.approx(straight, rel=1e-6)
    assert len(second.history.rows) == 3


def test_non_finite_loss_ends_the_trial_as_diverged(digits, monkeypatch) -> None:
    trainer = Trainer(load_config(data=TINY), data=digits)
    original = trainer.method.training_loss
    calls = {"n": 0}

    def exploding(views, *, progress):
        calls["n"] += 1
        loss = original(views, progress=progress)
        return loss * float("nan") if calls["n"] > trainer.steps_per_epoch else loss

    monkeypatch.setattr(trainer.method, "training_loss", exploding)
    results = list(trainer.epochs())
    assert [r.status for r in results] == ["running", "diverged"]
    assert math.isnan(results[-1].metrics["train/loss"])
    assert "oracle/linear/digits" not in results[-1].metrics


def test_collapse_abort_stops_a_collapsing_trial_only(digits) -> None:
    collapse = {"fraction": 0.3, "floor": 1.5, "patience": 2}
    data = {**TINY, "train": {**TINY["train"], "epochs": 8, "lr": 5e-3}}
    data["evaluation"] = {**TINY["evaluation"], "every_n_epochs": 1, "collapse": collapse}
    # Invariance only: nothing keeps the embeddings apart, they collapse to a point.
    invariance_only = {"inv_weight": 25.0, "var_weight": 0.0, "cov_weight": 0.0}
    collapsing = load_config(data=data, overrides={"method.params": invariance_only})
    results = list(Trainer(collapsing, data=digits).epochs())
    assert results[-1].status == "collapsed"
    assert results[-1].epoch < 8
    threshold = max(0.3 * 16, 1.5)
    ranks = [r.metrics["rankme/embedding"] for r in results]
    assert ranks[-1] < threshold and ranks[-2] < threshold
    assert "oracle/linear/digits" not in results[-1].metrics  # no probe spent on it

    healthy = list(Trainer(load_config(data=data), data=digits).epochs())
    assert healthy[-1].status == "ok" and healthy[-1].epoch == 8


@pytest.mark.parametrize(("precision", "channels_last"), [("bf16", False), ("fp32", True), ("bf16", True)])
def test_mixed_precision_and_channels_last_train_on_cpu(digits, precision, channels_last) -> None:
    data = {**TINY, "train": {**TINY["train"], "epochs": 2, "precision": precision, "channels_last": channels_last}}
    trainer = Trainer(load_config(data=data), data=digits)
    assert (trainer.autocast_dtype is torch.bfloat16) == (precision == "bf16")
    convolution = next(p for p in trainer.method.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert convolution.is_contiguous(memory_format=torch.channels_last) is channels_last
    losses = [r.metrics["train/loss"] for r in trainer.epochs()]
    assert all(math.isfinite(loss) for loss in losses)
    # Evaluation stays fp32: RankMe is still exact.
    rep, emb = trainer.method.embed(normalize(digits.train.images[:500]))
    assert emb.dtype == torch.float32
    final = trainer.history.rows[-1]
    assert final["rankme/embedding"] == pytest.approx(_rankme_float64(emb.numpy()), rel=1e-6)


def test_channels_last_is_the_default(digits) -> None:
    trainer = Trainer(load_config(data=TINY), data=digits)
    convolution = next(p for p in trainer.method.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert convolution.is_contiguous(memory_format=torch.channels_last)
