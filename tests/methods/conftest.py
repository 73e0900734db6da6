"""Shared fixtures for the method tests: a fixed digits batch, fixed views, a tiny backbone and
a "does training lower the loss on this batch" check."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from sweeper.config import DataConfig
from sweeper.data import MultiViewAugment, load_dataset
from sweeper.methods import SSLMethod
from sweeper.models import Backbone, build_backbone

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


def _measure(method: SSLMethod, views: Sequence[torch.Tensor], seed: int) -> float:
    """The training loss of ``views`` without changing the method (buffers restored)."""
    buffers = {name: value.clone() for name, value in method.named_buffers()}
    torch.manual_seed(seed)
    with torch.no_grad():
        loss = float(method.training_loss(views, progress=0.0))
    with torch.no_grad():
        for name, value in method.named_buffers():
            value.copy_(buffers[name])
    return loss


@pytest.fixture
def loss_before_after() -> Callable[..., tuple[float, float]]:
    """Train ``steps`` AdamW steps on fixed views, with the engine's call sequence, and return
    the loss on those same views before and after (random parts of the loss seeded alike)."""

    def run(
        method: SSLMethod,
        views: Sequence[torch.Tensor],
        *,
        steps: int = 5,
        lr: float = 1e-3,
        seed: int = 0,
        epoch: int = 0,
    ) -> tuple[float, float]:
        method.train()
        optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=lr)
        before = _measure(method, views, seed)
        for step in range(steps):
            progress = step / (steps * 10)
            torch.manual_seed(seed + step + 1)
            loss = method.training_loss(views, progress=progress)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            method.before_optimizer_step(progress=progress, epoch=epoch)
            optimizer.step()
            method.after_step(progress=progress)
        return before, _measure(method, views, seed)

    return run
