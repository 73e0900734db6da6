"""Data-parallel training equals single-process training: for each of the nine methods, two
training steps with 2 gloo processes on a global batch B (B/2 rows each) give the loss and the
weights of one process with batch B, from the same initial weights and the same views. Also:
a 2-process trainer resumes exactly, reports one loss and one RankMe, and its distributed
RankMe is that of all the evaluation images. No Ray (``sweeper.distributed.spawn``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.multiprocessing import ProcessRaisedException

from sweeper import distributed
from sweeper.config import SweeperConfig
from sweeper.data import load_dataset
from sweeper.engine import Trainer
from sweeper.metrics import rankme
from sweeper.names import RANKME_EMBEDDING, TRAIN_LOSS
from sweeper.registry import BUILTIN_METHODS
from sweeper.testing import BATCH, Equivalence, ddp_equivalence, method_config

STEPS = 2
# Small heads; every prototype layer trains from the first step; SwAV's queue (one global
# batch long) is full, and used, at the second step; DINO and SwAV with two local crops.
PARAMS: dict[str, dict[str, Any]] = {
    "byol": {"predictor_hidden_dim": 32},
    "dino": {"num_prototypes": 64, "head_batch_norm": True, "freeze_last_layer_epochs": 0, "num_local_crops": 2},
    "swav": {
        "num_prototypes": 16,
        "queue_length": BATCH,
        "queue_start": 0.0,
        "freeze_prototypes_epochs": 0,
        "num_local_crops": 2,
    },
    "carp": {"num_prototypes": 64, "block_size": 16},
}


def _config(method: str, **train: Any) -> SweeperConfig:
    config = method_config(method, params=PARAMS.get(method, {}), projector=(32, 16), image_size=8)
    return config.with_overrides({f"train.{key}": value for key, value in train.items()})


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in trainer.method.state_dict().items()}


@pytest.fixture(scope="module")
def equivalence() -> dict[str, Equivalence]:
    torch.set_num_threads(1)
    methods = list(BUILTIN_METHODS)
    return dict(zip(methods, ddp_equivalence([_config(method) for method in methods], steps=STEPS), strict=True))


@pytest.mark.parametrize("method", list(BUILTIN_METHODS))
def test_two_processes_train_as_one_with_the_global_batch(equivalence: dict[str, Equivalence], method: str) -> None:
    result = equivalence[method]
    assert result.problem is None, (method, result.problem)
    assert len(result.rank_losses) == 2 and all(len(losses) == STEPS for losses in result.rank_losses)
    assert result.max_weight_difference <= 1e-5, method
    # The comparison has teeth: the two steps moved the weights far more than the tolerance.
    assert result.moved > 1e-3


def test_swav_queues_together_hold_the_single_process_queue(equivalence: dict[str, Equivalence]) -> None:
    expected = equivalence["swav"].state["queue"]
    half = BATCH // 2
    parts = [state["queue"][:, :half] for state in equivalence["swav"].rank_states]
    torch.testing.assert_close(torch.cat(parts, dim=1), expected, rtol=0, atol=1e-5)


def _resume_and_evaluate() -> dict[str, Any]:
    """Two epochs straight, and one epoch + checkpoint + a new trainer + one epoch; then the
    distributed label-free metrics against rank 0's own computation on every sample."""
    config = _config("vicreg", batch_size=64)
    straight = Trainer(config, device="cpu")
    results = list(straight.epochs())
    first = Trainer(config, device="cpu")
    next(first.epochs())
    state = first.state_dict()
    resumed = Trainer(config, device="cpu")
    resumed.load_state_dict(state)
    resumed_results = list(resumed.epochs())
    samples = straight.data.train.images[: config.evaluation.rankme_samples]
    with torch.no_grad():
        straight.method.eval()
        local_rank = rankme(straight.method.embed((samples - 0.5) / 0.25)[1], max_samples=None)
    return {
        "straight": _state(straight),
        "resumed": _state(resumed),
        "metrics": [result.metrics for result in results],
        "resumed_metrics": [result.metrics for result in resumed_results],
        "rng_states": len(state["rng"]),
        "rankme_of_all_samples": local_rank,
    }


@pytest.fixture(scope="module")
def resumed() -> list[dict[str, Any]]:
    return distributed.spawn(_resume_and_evaluate, world_size=2)


def test_a_resumed_two_process_trainer_continues_exactly(resumed: list[dict[str, Any]]) -> None:
    for result in resumed:
        assert result["rng_states"] == 2  # every rank's RNG state is in the checkpoint
        for key, value in result["straight"].items():
            assert torch.equal(value, result["resumed"][key]), key
        assert result["resumed_metrics"][-1][TRAIN_LOSS] == result["metrics"][-1][TRAIN_LOSS]


def test_every_process_reports_the_same_metrics(resumed: list[dict[str, Any]]) -> None:
    first, second = resumed
    for row_a, row_b in zip(first["metrics"], second["metrics"], strict=True):
        assert row_a[TRAIN_LOSS] == row_b[TRAIN_LOSS]
        assert row_a[RANKME_EMBEDDING] == row_b[RANKME_EMBEDDING]


def test_the_evaluators_rankme_is_that_of_every_evaluation_image(resumed: list[dict[str, Any]]) -> None:
    for result in resumed:
        reported = result["metrics"][-1][RANKME_EMBEDDING]
        assert abs(reported - result["rankme_of_all_samples"]) <= 1e-9 * reported


def test_a_batch_that_does_not_split_between_the_processes_is_refused() -> None:
    with pytest.raises(ProcessRaisedException, match="train.batch_size: 33 does not split evenly between 2 workers"):
        distributed.spawn(_trainer_with_batch, 33, world_size=2)


def _trainer_with_batch(batch: int) -> None:
    Trainer(_config("simclr", batch_size=batch), data=load_dataset(_config("simclr").data), device="cpu")
