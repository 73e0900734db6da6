"""Classical rank against an independent float64 numpy SVD with the dtype's tolerance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sweeper.metrics import classical_rank


def ref_rank(z: np.ndarray) -> int:
    s = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    tol = s.max() * max(z.shape) * np.finfo(z.dtype).eps
    return int(np.sum(s > tol))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("r", [1, 7, 48])
def test_low_rank_matrices(rng: np.random.Generator, dtype: type, r: int) -> None:
    z = (rng.standard_normal((1000, r)) @ rng.standard_normal((r, 48))).astype(dtype)
    assert classical_rank(z) == ref_rank(z) == r
    assert classical_rank(torch.from_numpy(z)) == r
    assert classical_rank(z.T.copy()) == r  # N < K


def test_tolerance_follows_the_input_dtype(rng: np.random.Generator) -> None:
    # Singular values 1 and 1e-9: above float64's tolerance, below float32's.
    u, _ = np.linalg.qr(rng.standard_normal((400, 2)))
    v, _ = np.linalg.qr(rng.standard_normal((20, 2)))
    z = (u * np.array([1.0, 1e-9])) @ v.T
    assert classical_rank(z) == ref_rank(z) == 2
    assert classical_rank(torch.from_numpy(z).float()) == 1


def test_dead_columns_and_near_square(rng: np.random.Generator) -> None:
    z = rng.standard_normal((60, 50)).astype(np.float32)
    z[:, :9] = 0.0
    assert classical_rank(z) == ref_rank(z) == 41


def test_zero_matrix_is_zero() -> None:
    assert classical_rank(np.zeros((30, 4))) == 0


def test_non_finite_raises() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        classical_rank(torch.tensor([[1.0, math.nan], [0.0, 1.0]]))
