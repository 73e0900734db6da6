"""Stable rank ‖Z‖_F² / σ_1² against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sweeper.metrics import stable_rank


def ref_stable_rank(z: np.ndarray) -> float:
    z = z.astype(np.float64)
    return float(np.sum(z * z) / np.linalg.norm(z, ord=2) ** 2)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(2)


@pytest.mark.parametrize("shape", [(500, 40), (30, 200), (50, 50)])
def test_matches_numpy(rng: np.random.Generator, shape: tuple[int, int]) -> None:
    z = rng.standard_normal(shape).astype(np.float32) * np.linspace(1, 0.05, shape[1]).astype(np.float32)
    assert stable_rank(z) == pytest.approx(ref_stable_rank(z), rel=1e-9)
    assert stable_rank(torch.from_numpy(z)) == pytest.approx(ref_stable_rank(z), rel=1e-9)


def test_k_equal_singular_values_and_rank_one(rng: np.random.Generator) -> None:
    u, _ = np.linalg.qr(rng.standard_normal((300, 5)))
    v, _ = np.linalg.qr(rng.standard_normal((30, 5)))
    assert stable_rank(2.0 * u @ v.T) == pytest.approx(5.0, rel=1e-12)
    assert stable_rank(np.outer(rng.standard_normal(300), rng.standard_normal(30))) == pytest.approx(1.0)


def test_scale_invariant_and_zero(rng: np.random.Generator) -> None:
    z = rng.standard_normal((200, 20))
    assert stable_rank(1e-4 * z) == pytest.approx(stable_rank(z), rel=1e-12)
    assert stable_rank(np.zeros((10, 3))) == 1.0


def test_non_finite_raises() -> None:
    z = torch.ones(4, 4)
    z[0, 0] = float("inf")
    with pytest.raises(ValueError):
        stable_rank(z)
