"""Shared fixtures: one embedded Ray instance per test module that asks for it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A 2-CPU embedded Ray shared by the tests of one module (starting Ray costs seconds)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def tiny_config_data(tmp_path, **overrides) -> dict:
    """A seconds-long digits sweep: 3 VICReg covariance weights, 2 epochs, 8×8 images."""
    data = {
        "name": "tiny",
        "storage_path": str(tmp_path / "sweeps"),
        "seed": 0,
        "data": {"dataset": "digits", "image_size": 8},
        "method": {"name": "vicreg"},
        "model": {"backbone": "small_cnn", "projector": [32, 16]},
        "train": {"epochs": 2, "batch_size": 128, "warmup_epochs": 0},
        "evaluation": {"every_n_epochs": 1, "rankme_samples": 1000, "linear_epochs": 20},
        "search": {
            "algorithm": "grid",
            "space": {"method.params.cov_weight": {"values": [0.0, 1.0, 8.0]}},
            "max_concurrent": 2,
        },
        "selection": {"rule": "plateau", "param": "method.params.cov_weight", "tolerance": 0.05},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    for key, value in overrides.items():
        data[key] = value
    return data
