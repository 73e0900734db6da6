"""The Ray Tune trainable without a sweep: one trial top to bottom against a stand-in for Tune's
session (what it reports, when it checkpoints, how it resumes), and its out-of-memory errors."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from ray import tune

from sweeper import trainable
from sweeper.config import load_config
from sweeper.engine import EpochResult, Trainer
from sweeper.trainable import CHECKPOINT_FILE, TrialOutOfMemoryError, train_trial

KEY = "method.params.cov_weight"
TINY = {
    "name": "trainable-test",
    "data": {"image_size": 8},
    "model": {"projector": [32, 16]},
    "train": {"epochs": 4, "batch_size": 128, "warmup_epochs": 1},
    "evaluation": {"every_n_epochs": 2, "rankme_samples": 500, "linear_epochs": 5},
    "search": {"space": {KEY: {"values": [1.0, 4.0]}}},
}


class _Session:
    """Tune's side of a trial: the checkpoint it hands back, and what the trial reports (each
    checkpoint copied out, as Tune persists it before the trial deletes its temporary copy)."""

    def __init__(self, root: Path, checkpoint: Path | None = None) -> None:
        self.root = root
        self.checkpoint = checkpoint
        self.reports: list[dict[str, Any]] = []
        self.checkpoints: dict[int, Path] = {}

    def get_checkpoint(self) -> tune.Checkpoint | None:
        return None if self.checkpoint is None else tune.Checkpoint.from_directory(str(self.checkpoint))

    def report(self, metrics: dict[str, Any], *, checkpoint: tune.Checkpoint | None = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint is not None:
            kept = self.root / f"epoch-{metrics['epoch']}"
            shutil.copytree(checkpoint.path, kept)
            self.checkpoints[metrics["epoch"]] = kept


class _Context:
    def get_node_id(self) -> str:
        return "node-1"


@pytest.fixture
def session(monkeypatch, tmp_path, one_thread):
    def install(checkpoint: Path | None = None) -> _Session:
        fake = _Session(tmp_path / f"session-{len(list(tmp_path.iterdir()))}", checkpoint)
        monkeypatch.setattr(trainable.tune, "get_checkpoint", fake.get_checkpoint)
        monkeypatch.setattr(trainable.tune, "report", fake.report)
        monkeypatch.setattr(trainable.ray, "get_runtime_context", _Context)
        return fake

    return install


def test_a_trial_reports_every_epoch_checkpoints_and_resumes_exactly(session) -> None:
    base = load_config(data=TINY).to_dict()
    straight = session()
    train_trial({KEY: 4.0}, base_config=base)
    reports = straight.reports
    assert [r["epoch"] for r in reports] == [1, 2, 3, 4]
    assert [r["status"] for r in reports] == ["running", "running", "running", "ok"]
    assert [r["evaluated"] for r in reports] == [False, True, False, True]
    assert {r["node_id"] for r in reports} == {"node-1"}
    # The objective: clipped RankMe, NaN before the first evaluation, then its latest value.
    assert math.isnan(reports[0]["objective"])
    assert reports[1]["objective"] == reports[1]["rankme/embedding_clipped"] == reports[2]["objective"]
    assert reports[3]["objective"] == reports[3]["rankme/embedding_clipped"]
    assert "rankme/embedding" not in reports[2] and "oracle/linear/digits" in reports[3]
    spectrum = reports[3]["spectrum/embedding"]
    assert len(spectrum) == 16 and all(a >= b for a, b in zip(spectrum, spectrum[1:], strict=False))
    assert all("spectrum/embedding" not in r for r in reports[:3])
    assert sorted(straight.checkpoints) == [2, 4]  # every evaluation epoch and the last
    state = torch.load(straight.checkpoints[2] / CHECKPOINT_FILE, weights_only=False)
    assert state["epoch"] == 2 and state["config"]["method"]["params"]["cov_weight"] == 4.0

    # Tune hands the epoch-2 checkpoint back: the trial continues at epoch 3, exactly, and its
    # objective at the unevaluated epoch 3 comes from the history in the checkpoint.
    torch.manual_seed(999)  # the checkpoint restores the RNGs
    resumed = session(checkpoint=straight.checkpoints[2])
    train_trial({KEY: 4.0}, base_config=base)
    assert [r["epoch"] for r in resumed.reports] == [3, 4]
    for again, first in zip(resumed.reports, reports[2:], strict=True):
        assert again["train/loss"] == pytest.approx(first["train/loss"], rel=1e-6)
    assert resumed.reports[0]["objective"] == reports[1]["objective"]
    assert resumed.reports[1]["rankme/embedding"] == pytest.approx(reports[3]["rankme/embedding"], rel=1e-5)


def test_the_report_of_one_epoch() -> None:
    config = load_config(data=TINY)
    latest = {"train/loss": 0.5, "rankme/embedding": 20.0, "rankme/embedding_clipped": 16.0}
    result = EpochResult(4, {"train/loss": 0.5}, status="ok", evaluated=True, spectrum=[2.0, 1.0])
    report = trainable._result_report(config, result, latest, node_id="n")
    assert report == {
        "spectrum/embedding": [2.0, 1.0],
        "train/loss": 0.5,
        "node_id": "n",
        "epoch": 4,
        "status": "ok",
        "evaluated": True,
        "objective": 16.0,
    }
    oracle = config.with_overrides({"search.objective": "oracle/linear/digits"})
    unevaluated = EpochResult(1, {"train/loss": 0.7})
    assert math.isnan(trainable._result_report(oracle, unevaluated, latest, node_id="n")["objective"])
    assert trainable._result_report(oracle, unevaluated, {"oracle/linear/digits": 0.9}, node_id="n")["objective"] == 0.9


def test_checkpoint_file_round_trip(tmp_path, one_thread) -> None:
    config = load_config(data=TINY)
    first = Trainer(config)
    epochs = first.epochs()
    next(epochs)
    path = trainable._save_checkpoint(first, tmp_path)
    assert path == tmp_path / CHECKPOINT_FILE and path.is_file()
    expected = next(epochs).metrics["train/loss"]

    second = Trainer(config, data=first.data)
    trainable._load_checkpoint(second, tmp_path)
    assert second.epoch == 1 and second.history.rows == first.history.rows[:1]
    assert next(second.epochs()).metrics["train/loss"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("error", "where"),
    [
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"), "CPU memory"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "GPU memory"),
        (RuntimeError("HIP out of memory"), "memory"),
    ],
)
def test_out_of_memory_says_so_and_what_to_lower(monkeypatch, one_thread, error, where) -> None:
    def out_of_memory(config: Any) -> None:
        raise error

    monkeypatch.setattr(trainable, "_train", out_of_memory)
    base = load_config(data=TINY, overrides={"search.resources.gpu": 0.5}).to_dict()
    with pytest.raises(TrialOutOfMemoryError) as caught:
        train_trial({KEY: 1.0}, base_config=base)
    message = str(caught.value)
    assert message.startswith(f"trial ran out of {where} with train.batch_size=128: lower train.batch_size")
    assert f"[{type(error).__name__}: {str(error).splitlines()[0]}]" in message
    assert ("search.resources.gpu than 0.5" in message) == (where == "GPU memory")
    assert caught.value.__cause__ is error


def test_other_errors_pass_through(monkeypatch, one_thread) -> None:
    error = RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    def broken(config: Any) -> None:
        raise error

    monkeypatch.setattr(trainable, "_train", broken)
    with pytest.raises(RuntimeError) as caught:
        train_trial({KEY: 1.0}, base_config=load_config(data=TINY).to_dict())
    assert caught.value is error
