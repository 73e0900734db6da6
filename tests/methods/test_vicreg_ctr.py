"""VICReg-ctr: VICReg-exp on the transposed embeddings, against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sweeper.methods.vicreg_ctr import VICRegCtr, vicreg_ctr_loss
from sweeper.methods.vicreg_exp import VICRegExp, vicreg_exp_loss

PARAMS = {"inv_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0, "temperature": 0.1}


def _sample_terms_np(z: np.ndarray, tau: float) -> tuple[float, float]:
    """Variance hinge and LogSumExp covariance between the N samples (rows) of z (N, d)."""
    n, d = z.shape
    std = np.array([math.sqrt(np.var(z[i], ddof=1) + 1e-4) for i in range(n)])  # each sample over its dims
    variance = float(np.mean(np.maximum(0.0, 1.0 - std)))
    centred = z - z.mean(axis=1, keepdims=True)
    gram = centred @ centred.T / (d - 1)  # N × N covariance between samples
    lse = [math.log(sum(math.exp(gram[i, j] / tau) for j in range(n) if j != i)) for i in range(n)]
    return variance, sum(lse) / n


def _vicreg_ctr_np(a: np.ndarray, b: np.ndarray, lam: float, mu: float, nu: float, tau: float) -> float:
    var_a, cov_a = _sample_terms_np(a, tau)
    var_b, cov_b = _sample_terms_np(b, tau)
    return lam * float(np.mean((a - b) ** 2)) + mu * 0.5 * (var_a + var_b) + nu * (cov_a + cov_b)


OTHER = {"inv_weight": 2.0, "var_weight": 5.0, "cov_weight": 3.0, "temperature": 0.4}


@pytest.mark.parametrize("params", [PARAMS, OTHER])
def test_loss_matches_the_formula(params) -> None:
    g = torch.Generator().manual_seed(5)
    a = 0.8 * torch.randn(9, 7, generator=g, dtype=torch.float64)
    b = a + 0.2 * torch.randn(9, 7, generator=g, dtype=torch.float64)
    expected = _vicreg_ctr_np(a.numpy(), b.numpy(), *params.values())
    assert float(vicreg_ctr_loss(a, b, **params)) == pytest.approx(expected, rel=1e-10)


def test_is_vicreg_exp_on_the_transposed_embeddings() -> None:
    g = torch.Generator().manual_seed(6)
    a, b = (torch.randn(12, 5, generator=g) for _ in range(2))
    assert torch.equal(vicreg_ctr_loss(a, b, **OTHER), vicreg_exp_loss(a.T, b.T, **OTHER))
    assert VICRegCtr.transposed and issubclass(VICRegCtr, VICRegExp)
