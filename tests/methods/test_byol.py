"""BYOL: the loss against the paper's formula, the EMA target and its cosine schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sweeper.methods._teacher import cosine_momentum
from sweeper.methods.byol import BYOL, byol_loss


def _byol(backbone, projector, momentum, hidden, predictor=True) -> BYOL:
    params = {"base_momentum": momentum, "predictor_hidden_dim": hidden, "use_predictor": predictor}
    return BYOL(backbone, projector=projector, **params)


def _byol_np(p1: np.ndarray, p2: np.ndarray, t1: np.ndarray, t2: np.ndarray) -> float:
    """Σ over the two swapped pairs of mean_b ‖p/‖p‖ − t/‖t‖‖² (Grill et al. eq. 2)."""

    def pair(p: np.ndarray, t: np.ndarray) -> float:
        pn = p / np.linalg.norm(p, axis=1, keepdims=True)
        tn = t / np.linalg.norm(t, axis=1, keepdims=True)
        return float(np.mean(np.sum((pn - tn) ** 2, axis=1)))

    return pair(p1, t2) + pair(p2, t1)


def test_loss_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(2)
    p1, p2, t1, t2 = (torch.randn(10, 5, generator=g, dtype=torch.float64) for _ in range(4))
    expected = _byol_np(p1.numpy(), p2.numpy(), t1.numpy(), t2.numpy())
    assert float(byol_loss([p1, p2], [t1, t2])) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("progress", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_cosine_momentum_schedule(progress) -> None:
    base = 0.99
    expected = 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2
    assert cosine_momentum(progress, base) == pytest.approx(expected, abs=1e-12)


def test_target_is_an_ema_of_the_online_network(backbone, make_views) -> None:
    method = _byol(backbone, [32, 16], 0.9, 32)
    online = next(method.backbone.parameters())
    target = next(method.target_backbone.parameters())
    assert torch.equal(online, target) and not target.requires_grad
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    loss = method.training_loss(make_views(2), progress=0.5)
    loss.backward()
    assert target.grad is None
    old_target = target.detach().clone()
    optimizer.step()
    method.after_step(progress=0.5)
    m = cosine_momentum(0.5, 0.9)
    assert torch.allclose(target, m * old_target + (1 - m) * online.detach(), atol=1e-7)
    assert not torch.equal(target, online)


def test_without_predictor_the_online_projection_is_compared_directly(backbone, make_views) -> None:
    method = _byol(backbone, [32, 16], 0.0, 32, predictor=False)
    assert isinstance(method.predictor, torch.nn.Identity)
    views = make_views(2)
    with torch.no_grad():
        z = [method.projector(method.backbone(v)) for v in views]
        # τ = 0 and no predictor: the target equals the online network, the loss is symmetric
        loss = float(method.training_loss(views, progress=0.0))
    assert loss == pytest.approx(float(byol_loss(z, z)), rel=1e-5)
