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
from sweeper.config import SweeperConfig, load_config
from sweeper.data import load_dataset
from sweeper.engine import Trainer
from sweeper.methods import METHODS
from sweeper.metrics import rankme
from sweeper.names import RANKME_EMBEDDING, TRAIN_LOSS

BATCH = 32
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
    return load_config(
        data={
            "name": f"ddp-{method}",
            "data": {"image_size": 8},
            "method": {"name": method, "params": PARAMS.get(method, {})},
            "model": {"projector": [32, 16]},
            # SGD: Adam's first step is lr·sign(g), which turns rounding-level gradients into
            # lr-sized weight differences; the loss and its gradients are what is compared.
            "train": {"epochs": 2, "batch_size": BATCH, "optimizer": "sgd", "lr": 0.05, "warmup_epochs": 0, **train},
            "evaluation": {"every_n_epochs": 1, "rankme_samples": 300, "oracle": []},
            "selection": {"rule": "max"},
        }
    )


def _steps(trainer: Trainer, views_per_step: list[list[torch.Tensor]]) -> list[float]:
    """The global batch's loss of each step (this process's rows of ``views_per_step``)."""
    trainer.method.train()
    losses = []
    for step, views in enumerate(views_per_step):
        rows = distributed.shard(len(views[0]))
        loss = trainer.train_step([view[rows] for view in views], progress=step / trainer.total_steps)
        losses.append(float(distributed.all_reduce_(loss.detach().clone())) / distributed.world_size())
    return losses


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in trainer.method.state_dict().items()}


def _views_and_reference(method: str) -> tuple[list[list[torch.Tensor]], dict[str, Any]]:
    """Fixed views of the first STEPS batches, and one process's losses and final state."""
    config = _config(method)
    trainer = Trainer(config, device="cpu")
    after_init = torch.get_rng_state()  # what rank 0's trainer starts from (CARP draws from it)
    images = trainer.data.train.images
    torch.manual_seed(123)
    views = [trainer.augment(images[step * BATCH : (step + 1) * BATCH]) for step in range(STEPS)]
    initial = _state(trainer)
    torch.set_rng_state(after_init)
    losses = _steps(trainer, views)
    return views, {"losses": losses, "initial": initial, "state": _state(trainer)}


def _on_each_process(views_by_method: dict[str, list[list[torch.Tensor]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method, views in views_by_method.items():
        trainer = Trainer(_config(method), device="cpu")
        out[method] = {"losses": _steps(trainer, views), "state": _state(trainer)}
    return out


@pytest.fixture(scope="module")
def equivalence() -> dict[str, Any]:
    torch.set_num_threads(1)
    inputs, references = {}, {}
    for method in METHODS:
        inputs[method], references[method] = _views_and_reference(method)
    return {"reference": references, "processes": distributed.spawn(_on_each_process, inputs, world_size=2)}


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_train_as_one_with_the_global_batch(equivalence: dict[str, Any], method: str) -> None:
    reference = equivalence["reference"][method]
    for result in (process[method] for process in equivalence["processes"]):
        for got, expected in zip(result["losses"], reference["losses"], strict=True):
            assert abs(got - expected) <= 1e-5 * abs(expected), (method, result["losses"], reference["losses"])
        for key, expected in reference["state"].items():
            if key == "queue" or not expected.is_floating_point():
                continue
            difference = float((result["state"][key] - expected).abs().max()) if expected.numel() else 0.0
            assert difference <= 1e-5, (method, key, difference)
    # The comparison has teeth: the two steps moved the weights far more than the tolerance.
    moved = max(
        float((reference["state"][key] - value).abs().max())
        for key, value in reference["initial"].items()
        if value.is_floating_point() and value.numel()
    )
    assert moved > 1e-3


def test_swav_queues_together_hold_the_single_process_queue(equivalence: dict[str, Any]) -> None:
    expected = equivalence["reference"]["swav"]["state"]["queue"]
    half = BATCH // 2
    parts = [process["swav"]["state"]["queue"][:, :half] for process in equivalence["processes"]]
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
