"""LiDAR against an independent numpy implementation, and its behaviour on synthetic views.

What to expect (see sweeper/metrics/lidar.py): LiDAR counts the directions in which sample
identity stands out from view noise after whitening the noise, so

- views with no sample identity (all i.i.d.) give ≈ K · exp(−(K/(n−1) + K/(n(q−1)))/2): near
  the maximum K, lowered only by the finite-sample spread of the two covariance estimates;
- identity confined to an r-dimensional subspace, well above the noise, gives ≈ r;
- no between-sample spread at all (identical per-sample means, e.g. a collapsed encoder) gives 1.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sweeper.metrics import lidar


def ref_lidar(views: np.ndarray, delta: float = 1e-4, eps: float = 1e-7) -> float:
    v = views.astype(np.float64)
    n, q, k = v.shape
    mu_x = v.mean(axis=1)
    d = mu_x - mu_x.mean(axis=0)
    sigma_b = d.T @ d / (n - 1)
    w = (v - mu_x[:, None, :]).reshape(-1, k)
    sigma_w = w.T @ w / (n * (q - 1)) + delta * np.eye(k)
    lam_w, vec_w = np.linalg.eigh(sigma_w)
    inv_sqrt = vec_w @ np.diag(lam_w**-0.5) @ vec_w.T
    lam = np.clip(np.linalg.eigvalsh(inv_sqrt @ sigma_b @ inv_sqrt), 0, None)
    p = lam / lam.sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def views_with_identity(n: int, q: int, k: int, r: int, signal: float, seed: int) -> np.ndarray:
    """q noisy views (unit noise) of n samples whose identities span r dimensions."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((n, 1, k))
    centres[:, :, :r] = signal * rng.standard_normal((n, 1, r))
    return centres + rng.standard_normal((n, q, k))


def test_matches_numpy_reference() -> None:
    views = views_with_identity(300, 5, 24, r=6, signal=2.0, seed=0)
    views = views @ np.random.default_rng(1).standard_normal((24, 24))  # correlated noise
    assert lidar(views) == pytest.approx(ref_lidar(views), rel=1e-9)
    assert lidar(torch.from_numpy(views).float()) == pytest.approx(ref_lidar(views.astype(np.float32)), rel=1e-5)
    assert lidar(views, delta=0.1, eps=0.0) == pytest.approx(ref_lidar(views, delta=0.1, eps=0.0), rel=1e-9)


def test_no_sample_identity_gives_nearly_k() -> None:
    n, q, k = 2000, 4, 16
    value = lidar(torch.randn(n, q, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    expected = k * math.exp(-(k / (n - 1) + k / (n * (q - 1))) / 2)  # ≈ 15.92
    assert value == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("r", [1, 3, 8])
def test_identity_in_r_dimensions_gives_r(r: int) -> None:
    value = lidar(views_with_identity(1000, 4, 16, r=r, signal=100.0, seed=r))
    assert value == pytest.approx(r, rel=0.02)


def test_more_identity_dimensions_rank_higher() -> None:
    values = [lidar(views_with_identity(600, 4, 16, r=r, signal=10.0, seed=r)) for r in (1, 2, 4, 8)]
    assert values == sorted(values)


def test_no_between_sample_spread_is_one() -> None:
    noise = np.random.default_rng(2).standard_normal((1, 6, 8))
    same_means = np.repeat(noise, 50, axis=0) + 3.0  # every sample has the same views
    # Σ_b is zero up to the rounding of the grand mean: the value of a rank-1 collapse.
    assert lidar(same_means) == pytest.approx(1.0, abs=8 * 2e-6)
    assert lidar(np.zeros((10, 3, 4))) == 1.0  # collapsed encoder


def test_rotation_invariance_and_linear_invariance_up_to_delta() -> None:
    views = views_with_identity(400, 4, 12, r=5, signal=3.0, seed=3)
    q, _ = np.linalg.qr(np.random.default_rng(4).standard_normal((12, 12)))
    assert lidar(views @ q) == pytest.approx(lidar(views), rel=1e-9)
    a = np.random.default_rng(5).standard_normal((12, 12)) + 3 * np.eye(12)
    assert lidar(views @ a, delta=1e-10) == pytest.approx(lidar(views, delta=1e-10), rel=1e-6)


def test_validation() -> None:
    with pytest.raises(ValueError):
        lidar(torch.randn(10, 8))  # not (n, q, K)
    with pytest.raises(ValueError):
        lidar(torch.randn(1, 4, 8))  # one sample
    with pytest.raises(ValueError):
        lidar(torch.randn(10, 1, 8))  # one view
    bad = torch.randn(5, 3, 4)
    bad[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        lidar(bad)
