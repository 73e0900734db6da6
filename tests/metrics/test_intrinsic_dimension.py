"""TwoNN intrinsic dimension: known manifolds, an independent k-d-tree computation, duplicates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from sklearn.datasets import make_swiss_roll

from sweeper.metrics import intrinsic_dimension

N, AMBIENT = 2000, 50


def twonn(points: np.ndarray) -> float:
    """Facco et al. 2017, maximum likelihood (N - 1) / Σ log(r2 / r1), from a k-d tree."""
    distances, _ = cKDTree(points).query(points, k=3)
    return (len(points) - 1) / float(np.log(distances[:, 2] / distances[:, 1]).sum())


def embed(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``x`` (N, d) placed in a random d-dimensional subspace of R^50 and shifted."""
    basis, _ = np.linalg.qr(rng.standard_normal((AMBIENT, x.shape[1])))
    return x @ basis.T + rng.standard_normal(AMBIENT)


@pytest.mark.parametrize("d", [2, 5, 10])
def test_recovers_the_dimension_of_a_linear_manifold(d: int) -> None:
    rng = np.random.default_rng(d)
    z = embed(rng.standard_normal((N, d)), rng)
    assert intrinsic_dimension(z) == pytest.approx(d, rel=0.10)


def test_recovers_the_dimension_of_a_swiss_roll() -> None:
    rng = np.random.default_rng(0)
    roll, _ = make_swiss_roll(N, random_state=0)
    assert intrinsic_dimension(embed(roll, rng)) == pytest.approx(2.0, rel=0.10)


def test_matches_an_independent_kd_tree_computation() -> None:
    rng = np.random.default_rng(3)
    z = rng.standard_normal((700, 12)) * np.linspace(1.0, 0.1, 12)
    assert intrinsic_dimension(z) == pytest.approx(twonn(z), rel=1e-12)
    assert intrinsic_dimension(torch.from_numpy(z).float()) == pytest.approx(twonn(z.astype(np.float32)), rel=1e-6)


def test_duplicated_points_are_removed() -> None:
    rng = np.random.default_rng(4)
    z = rng.standard_normal((500, 6))
    repeated = np.concatenate([z, z[:200], z[:50]])[rng.permutation(750)]
    assert intrinsic_dimension(repeated) == pytest.approx(twonn(z), rel=1e-12)


def test_subsamples_max_samples_rows_with_its_seed() -> None:
    rng = np.random.default_rng(6)
    z = rng.standard_normal((3000, 4))
    rows = torch.randperm(3000, generator=torch.Generator().manual_seed(11))[:800].sort().values.numpy()
    assert intrinsic_dimension(z, max_samples=800, seed=11) == pytest.approx(twonn(z[rows]), rel=1e-12)
    assert intrinsic_dimension(z, max_samples=800, seed=11) == intrinsic_dimension(z, max_samples=800, seed=11)
    assert intrinsic_dimension(z, max_samples=800, seed=12) != intrinsic_dimension(z, max_samples=800, seed=11)


def test_undefined_cases_are_nan_and_bad_input_raises() -> None:
    assert math.isnan(intrinsic_dimension(np.ones((100, 3))))  # collapsed: one distinct point
    square = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert math.isnan(intrinsic_dimension(square))  # every r1 = r2: no likelihood maximum
    with pytest.raises(ValueError):
        intrinsic_dimension(np.array([[0.0, math.inf], [1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError):
        intrinsic_dimension(np.zeros((10, 2)), max_samples=2)
