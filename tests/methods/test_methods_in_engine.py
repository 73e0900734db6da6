"""Every method through the real training loop for one tiny epoch: finite loss, RankMe of the
embedding (and of the prototypes for clustering methods), state dict round trip."""

from __future__ import annotations

import math

import pytest

from sweeper.config import DataConfig, load_config
from sweeper.data import load_dataset
from sweeper.engine import Trainer
from sweeper.registry import BUILTIN_METHODS

SMALL = {
    "byol": {"predictor_hidden_dim": 32},
    "dino": {"num_prototypes": 64, "head_batch_norm": True},
    "swav": {"num_prototypes": 16, "queue_length": 128, "queue_start": 0.0},
    "carp": {"num_prototypes": 64, "block_size": 16},
}


@pytest.fixture(scope="module")
def digits8():
    return load_dataset(DataConfig(image_size=8))


@pytest.mark.parametrize("method", list(BUILTIN_METHODS))
def test_one_epoch_in_the_engine(method, digits8) -> None:
    config = load_config(
        data={
            "name": "engine-methods",
            "data": {"image_size": 8},
            "method": {"name": method, "params": SMALL.get(method, {})},
            "model": {"projector": [32, 16]},
            "train": {"epochs": 1, "batch_size": 256, "warmup_epochs": 0},
            "evaluation": {"every_n_epochs": 1, "rankme_samples": 300, "oracle": []},
            "selection": {"rule": "max"},
        }
    )
    trainer = Trainer(config, data=digits8, device="cpu")
    (result,) = list(trainer.epochs())
    assert result.status == "ok"
    assert math.isfinite(result.metrics["train/loss"])
    assert 1.0 <= result.metrics["rankme/embedding"] <= 16.0
    assert ("rankme/prototypes" in result.metrics) is (method in {"dino", "swav", "carp"})
    state = trainer.state_dict()
    again = Trainer(config, data=digits8, device="cpu")
    again.load_state_dict(state)
    for key, value in again.method.state_dict().items():
        assert value.equal(state["model"][key]), key
