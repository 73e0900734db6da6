"""VICReg-exp: the loss against an independent computation of Garrido et al.'s formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sweeper.methods.vicreg_exp import exp_covariance_loss, vicreg_exp_loss

PARAMS = {"inv_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0, "temperature": 0.1}


def _variance_np(z: np.ndarray) -> float:
    std = np.sqrt(z.var(axis=0, ddof=1) + 1e-4)
    return float(np.mean(np.maximum(0.0, 1.0 - std)))


def _exp_cov_np(z: np.ndarray, tau: float) -> float:
    """(1/d) Σ_i log Σ_{j≠i} exp(C_ij / τ), C the unbiased covariance of the columns."""
    n, d = z.shape
    centred = z - z.mean(axis=0)
    cov = centred.T @ centred / (n - 1)
    rows = [math.log(sum(math.exp(cov[i, j] / tau) for j in range(d) if j != i)) for i in range(d)]
    return sum(rows) / d


def _vicreg_exp_np(a: np.ndarray, b: np.ndarray, lam: float, mu: float, nu: float, tau: float) -> float:
    inv = float(np.mean((a - b) ** 2))
    variance = 0.5 * (_variance_np(a) + _variance_np(b))
    return lam * inv + mu * variance + nu * (_exp_cov_np(a, tau) + _exp_cov_np(b, tau))


def _pair(n: int = 12, d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    a = 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return a, a + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)


def test_exp_covariance_matches_the_formula() -> None:
    a, _ = _pair()
    assert float(exp_covariance_loss(a, 0.5)) == pytest.approx(_exp_cov_np(a.numpy(), 0.5), rel=1e-10)


OTHER = {"inv_weight": 1.0, "var_weight": 3.0, "cov_weight": 0.5, "temperature": 0.7}


@pytest.mark.parametrize("params", [PARAMS, OTHER])
def test_loss_matches_the_formula(params) -> None:
    a, b = _pair()
    expected = _vicreg_exp_np(a.numpy(), b.numpy(), *params.values())
    assert float(vicreg_exp_loss(a, b, **params)) == pytest.approx(expected, rel=1e-10)
