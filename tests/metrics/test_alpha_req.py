"""α-ReQ: recovery of known power-law exponents and agreement with a numpy log-log fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sweeper.metrics import AlphaReq, alpha_req


def ref_alpha(z: np.ndarray, lo: int, hi: int) -> tuple[float, float]:
    """numpy: covariance eigenvalues, np.polyfit of log λ_i on log i over ranks lo..hi."""
    lam = np.sort(np.linalg.eigvalsh(np.cov(z.astype(np.float64), rowvar=False)))[::-1]
    ranks = np.arange(lo, hi + 1)
    x, y = np.log(ranks), np.log(lam[lo - 1 : hi])
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    r2 = 1 - np.sum(residual**2) / np.sum((y - y.mean()) ** 2)
    return -float(slope), float(r2)


def with_covariance_spectrum(n: int, lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Z (n × K) whose sample covariance has exactly the eigenvalues lam."""
    k = len(lam)
    x = rng.standard_normal((n, k))
    x -= x.mean(axis=0)
    u, _ = np.linalg.qr(x)  # centred orthonormal columns
    v, _ = np.linalg.qr(rng.standard_normal((k, k)))
    return math.sqrt(n - 1) * (u * np.sqrt(lam)) @ v.T + 7.0


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(4)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_exact_power_law_recovered(rng: np.random.Generator, alpha: float) -> None:
    lam = np.arange(1, 129, dtype=np.float64) ** -alpha
    fit = alpha_req(with_covariance_spectrum(1000, lam, rng))
    assert isinstance(fit, AlphaReq)
    assert fit.alpha == pytest.approx(alpha, abs=1e-6)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_sampled_power_law_recovered(alpha: float) -> None:
    # Gaussian samples with population spectrum i^-α: finite-sample noise stays within ±0.05.
    g = torch.Generator().manual_seed(int(alpha * 10))
    k = 256
    z = torch.randn(8192, k, generator=g) * torch.arange(1, k + 1, dtype=torch.float32) ** (-alpha / 2)
    assert alpha_req(z).alpha == pytest.approx(alpha, abs=0.05)


def test_matches_numpy_fit(rng: np.random.Generator) -> None:
    z = rng.standard_normal((600, 150)) * np.arange(1, 151) ** -0.8 * (1 + 0.3 * rng.random(150))
    alpha, r2 = ref_alpha(z, 10, 100)
    fit = alpha_req(z)
    assert fit.alpha == pytest.approx(alpha, rel=1e-9)
    assert fit.r2 == pytest.approx(r2, rel=1e-9)
    fit = alpha_req(torch.from_numpy(z), rank_range=(3, 40))
    assert fit.alpha == pytest.approx(ref_alpha(z, 3, 40)[0], rel=1e-9)


def test_range_clipped_to_available_ranks(rng: np.random.Generator) -> None:
    z = rng.standard_normal((400, 50)) * np.arange(1, 51) ** -0.6
    assert alpha_req(z).alpha == pytest.approx(ref_alpha(z, 10, 50)[0], rel=1e-9)
    # Numerical rank 20 (in float64): only ranks 10..20 are fitted.
    low = rng.standard_normal((400, 20)) @ rng.standard_normal((20, 60))
    assert alpha_req(low).alpha == pytest.approx(ref_alpha(low, 10, 20)[0], rel=1e-7)


def test_unfittable_is_nan() -> None:
    fit = alpha_req(torch.randn(100, 10))  # only rank 10 is in (10, 100)
    assert math.isnan(fit.alpha) and math.isnan(fit.r2)
    fit = alpha_req(np.ones((20, 30)))  # zero covariance
    assert math.isnan(fit.alpha) and math.isnan(fit.r2)


def test_flat_spectrum_is_zero_with_perfect_fit(rng: np.random.Generator) -> None:
    fit = alpha_req(with_covariance_spectrum(300, np.ones(120), rng))
    assert fit.alpha == pytest.approx(0.0, abs=1e-9) and fit.r2 == 1.0


def test_validation() -> None:
    z = torch.randn(50, 20)
    for bad in ((0, 10), (5, 5), (10, 3)):
        with pytest.raises(ValueError):
            alpha_req(z, rank_range=bad)
    with pytest.raises(ValueError):
        alpha_req(torch.randn(1, 20))
