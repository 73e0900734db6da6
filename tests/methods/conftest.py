"""Shared fixtures for the method tests: a fixed digits batch, fixed views, a tiny backbone and
a "does training lower the loss on this batch" check."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from sweeper.config import DataConfig
from sweeper.data import MultiViewAugment, load_dataset
from sweeper.models import Backbone, build_backbone
from sweeper.testing import loss_before_after as loss_before_after_steps

BATCH = 64


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every method test on one torch thread (see the root conftest's ``one_thread``)."""


@pytest.fixture(scope="session")
def digits_batch() -> torch.Tensor:
    """64 real 16×16 digits in [0, 1] (the first of the training split)."""
    return load_dataset(DataConfig(image_size=16)).train.images[:BATCH]


@pytest.fixture
def make_views(digits_batch: torch.Tensor) -> Callable[[int], list[torch.Tensor]]:
    """``make_views(n)``: n fixed augmented views of the digits batch (seeded)."""

    def make(n: int = 2, seed: int = 0) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return MultiViewAugment(num_views=n, flip=False)(digits_batch)

    return make


@pytest.fixture
def backbone() -> Backbone:
    torch.manual_seed(0)
    return build_backbone("small_cnn", in_channels=1, image_size=16)


@pytest.fixture
def loss_before_after() -> Callable[..., tuple[float, float]]:
    """Train a few AdamW steps on fixed views, with the engine's call sequence, and return the
    loss on those same views before and after (``sweeper.testing.loss_before_after``)."""
    return loss_before_after_steps
