"""Barlow Twins: the loss against an independent computation of the paper's formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sweeper.methods.barlow_twins import BarlowTwins


def _barlow_np(a: np.ndarray, b: np.ndarray, lam: float) -> float:
    """Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij², C the cross-correlation of batch-standardised embeddings
    (population variance + 1e-5, as the paper's affine-free BatchNorm)."""
    n = len(a)
    za = (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)
    zb = (b - b.mean(0)) / np.sqrt(b.var(0) + 1e-5)
    c = za.T @ zb / n
    on = sum((1 - c[i, i]) ** 2 for i in range(len(c)))
    off = sum(c[i, j] ** 2 for i in range(len(c)) for j in range(len(c)) if i != j)
    return on + lam * off


@pytest.mark.parametrize("lam", [0.0, 5.1e-3, 0.5])
def test_loss_matches_the_formula(backbone, lam) -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(16, 6, generator=g, dtype=torch.float64)
    b = a + 0.5 * torch.randn(16, 6, generator=g, dtype=torch.float64)
    method = BarlowTwins(backbone, projector=[8, 6], lambda_offdiag=lam)
    assert float(method.criterion(a, b)) == pytest.approx(_barlow_np(a.numpy(), b.numpy(), lam), rel=1e-9)
