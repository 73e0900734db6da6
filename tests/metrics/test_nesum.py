"""NESum Σλ_i/λ_1 of the covariance, against numpy.cov."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sweeper.metrics import nesum


def ref_nesum(z: np.ndarray) -> float:
    lam = np.linalg.eigvalsh(np.cov(z.astype(np.float64), rowvar=False))
    lam = np.clip(lam, 0, None)
    return float(lam.sum() / lam.max())


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(3)


@pytest.mark.parametrize("shape", [(800, 32), (40, 100), (60, 60)])
def test_matches_numpy(rng: np.random.Generator, shape: tuple[int, int]) -> None:
    z = rng.standard_normal(shape) * np.linspace(2, 0.1, shape[1]) + 10.0  # large mean: centred
    assert nesum(z) == pytest.approx(ref_nesum(z), rel=1e-8)
    assert nesum(torch.from_numpy(z).float()) == pytest.approx(ref_nesum(z.astype(np.float32)), rel=1e-6)


def test_k_equal_variances(rng: np.random.Generator) -> None:
    # Columns of a centred orthonormal basis: covariance has exactly k equal eigenvalues.
    x = rng.standard_normal((500, 6))
    x -= x.mean(axis=0)
    q, _ = np.linalg.qr(x)  # centred orthonormal columns
    z = np.hstack([q, np.zeros((500, 10))]) + 3.0
    assert nesum(z) == pytest.approx(6.0, rel=1e-10)


def test_invariances_and_collapse(rng: np.random.Generator) -> None:
    z = rng.standard_normal((300, 12))
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    assert nesum(5.0 * z @ q - 2.0) == pytest.approx(nesum(z), rel=1e-10)
    assert nesum(np.tile(rng.standard_normal(12), (50, 1))) == 1.0  # identical rows


def test_needs_two_rows() -> None:
    with pytest.raises(ValueError):
        nesum(np.ones((1, 5)))
