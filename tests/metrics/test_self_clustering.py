"""Self-clustering against the definition written out in numpy (n × n similarity matrix)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sweeper.metrics import self_clustering


def ref_self_clustering(z: np.ndarray) -> float:
    z = z.astype(np.float64)
    z = z[np.linalg.norm(z, axis=1) > 0]
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    n, k = u.shape
    s = np.sum((u @ u.T) ** 2)  # ‖ẐẐᵀ‖_F²
    random = n + n * (n - 1) / k  # E[cos²] = 1/K for independent uniform directions
    return float((s - random) / (n * n - random))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(5)


@pytest.mark.parametrize("shape", [(400, 16), (20, 90)])
def test_matches_definition(rng: np.random.Generator, shape: tuple[int, int]) -> None:
    z = rng.standard_normal(shape) + 0.3
    z[3] = 0.0  # zero rows are ignored
    assert self_clustering(z) == pytest.approx(ref_self_clustering(z), rel=1e-9)
    assert self_clustering(torch.from_numpy(z).float()) == pytest.approx(ref_self_clustering(z), rel=1e-5)


def test_collapsed_rows_score_one(rng: np.random.Generator) -> None:
    direction = rng.standard_normal(32)
    scales = rng.uniform(0.1, 10, size=(300, 1)) * rng.choice([-1.0, 1.0], size=(300, 1))
    assert self_clustering(scales * direction) == pytest.approx(1.0, abs=1e-12)


def test_random_gaussian_rows_score_near_zero(rng: np.random.Generator) -> None:
    # Standard deviation of the score here is ~sqrt(2)/(n K) ≈ 1e-4.
    assert abs(self_clustering(rng.standard_normal((1000, 32)))) < 2e-3


def test_orthogonal_rows_hit_the_minimum(rng: np.random.Generator) -> None:
    q, _ = np.linalg.qr(rng.standard_normal((24, 24)))
    assert self_clustering(q[:10]) == pytest.approx(-1 / 23, rel=1e-9)


def test_degenerate_inputs_are_collapsed() -> None:
    assert self_clustering(np.zeros((10, 5))) == 1.0
    assert self_clustering(np.array([[1.0, 2.0], [0.0, 0.0]])) == 1.0
    assert self_clustering(np.arange(1.0, 9.0).reshape(8, 1)) == 1.0


def test_non_finite_raises() -> None:
    with pytest.raises(ValueError):
        self_clustering(torch.tensor([[float("nan"), 1.0], [1.0, 1.0]]))
