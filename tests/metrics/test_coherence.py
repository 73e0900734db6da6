"""Coherence and pseudo-condition number against a float64 numpy SVD of the centred matrix."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from sweeper import distributed
from sweeper.metrics import (
    coherence,
    coherence_and_condition,
    distributed_coherence_and_condition,
    pseudo_condition,
)


def reference(z: np.ndarray) -> tuple[float, float]:
    """Tsitsulin et al. 2023 from numpy's SVD: centred, K_r at matrix_rank's tolerance."""
    eps = np.finfo(z.dtype).eps
    centred = z.astype(np.float64) - z.astype(np.float64).mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    kept = int((s > s[0] * max(z.shape) * eps).sum())
    leverage = (u[:, :kept] ** 2).sum(axis=1)
    return float(leverage.max() * z.shape[0] / kept), float(s[0] / s[kept - 1])


def spectrum(n: int, k: int, sigma: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """(n, k) rows with the given singular values (random singular vectors)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, len(sigma))))
    v, _ = np.linalg.qr(rng.standard_normal((k, len(sigma))))
    return (u * sigma) @ v.T


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(5)


# Tall (the Gram path), near-square and wide (the SVD path).
@pytest.mark.parametrize("shape", [(3000, 64), (500, 40), (100, 80), (60, 200)])
def test_matches_numpy_on_random_matrices(rng: np.random.Generator, shape: tuple[int, int]) -> None:
    z = rng.standard_normal(shape) * np.linspace(1.0, 0.02, shape[1]) + rng.standard_normal(shape[1])
    expected = reference(z)
    assert coherence_and_condition(z) == pytest.approx(expected, rel=1e-9)
    assert coherence(torch.from_numpy(z)) == pytest.approx(expected[0], rel=1e-9)
    assert pseudo_condition(z) == pytest.approx(expected[1], rel=1e-9)


@pytest.mark.parametrize(
    "case",
    ["steep power law", "exact rank 10 + outlier", "heavy tails", "float32"],
)
def test_matches_numpy_on_structured_matrices(case: str) -> None:
    rng = np.random.default_rng(1)
    if case == "steep power law":  # σ_i ∝ i^-3: σ_min / σ_max = 64^-3 ≈ 4e-6
        z = spectrum(4000, 64, np.arange(1, 65, dtype=float) ** -3.0)
    elif case == "exact rank 10 + outlier":  # one sample alone defines a direction
        z = rng.standard_normal((3000, 10)) @ rng.standard_normal((10, 64))
        z[17] += 40.0 * rng.standard_normal(64)
    elif case == "heavy tails":
        z = rng.standard_t(df=2, size=(2500, 48))
    else:
        z = (spectrum(4000, 64, np.geomspace(1.0, 1e-3, 64)) * 100.0 + 3.0).astype(np.float32)
    value, condition = coherence_and_condition(z)
    expected_value, expected_condition = reference(z)
    assert value == pytest.approx(expected_value, rel=1e-7)
    assert condition == pytest.approx(expected_condition, rel=1e-6)
    if case == "exact rank 10 + outlier":
        assert value > 0.5 * 3000 / 11  # close to its bound N / K_r: a coherent embedding


def test_a_full_factorial_design_is_perfectly_incoherent_and_conditioned() -> None:
    # All 2^6 sign patterns: orthogonal columns of equal norm, every row the same leverage.
    z = np.array(list(itertools.product([-1.0, 1.0], repeat=6)))
    assert coherence_and_condition(z) == pytest.approx((1.0, 1.0), rel=1e-12)
    tall = np.tile(z, (40, 1))  # 2560 x 6: the Gram path
    assert coherence_and_condition(tall) == pytest.approx((1.0, 1.0), rel=1e-12)


def test_centred_and_scale_invariant(rng: np.random.Generator) -> None:
    z = rng.standard_normal((2000, 32)) * np.linspace(1.0, 0.1, 32)
    base = coherence_and_condition(z)
    assert coherence_and_condition(1e-3 * z + 1e3) == pytest.approx(base, rel=1e-6)


def test_equal_rows_have_no_direction_and_max_samples_keeps_the_first_rows(rng: np.random.Generator) -> None:
    assert all(math.isnan(v) for v in coherence_and_condition(np.ones((50, 4))))
    assert all(math.isnan(v) for v in coherence_and_condition(np.ones((1, 4))))
    z = rng.standard_normal((900, 16))
    assert coherence_and_condition(z, max_samples=300) == pytest.approx(reference(z[:300]), rel=1e-9)


def test_non_finite_or_empty_raises() -> None:
    z = torch.ones(8, 4)
    z[2, 1] = float("nan")
    with pytest.raises(ValueError):
        coherence(z)
    with pytest.raises(ValueError):
        pseudo_condition(np.zeros((0, 4)))


MATRICES = {
    "tall": spectrum(3000, 48, np.geomspace(1.0, 1e-2, 48)) + 5.0,
    "rank-8": spectrum(3000, 48, np.geomspace(1.0, 0.1, 8)),
    "float32": (spectrum(3000, 48, np.linspace(1.0, 0.05, 48)) * 10).astype(np.float32),
}


def _on_each_process(matrices: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    out = {}
    for name, z in matrices.items():
        out[name] = distributed_coherence_and_condition(torch.from_numpy(z[distributed.shard(len(z))]))
    whole = matrices["tall"] if distributed.rank() == 0 else matrices["tall"][:0]
    out["one empty shard"] = distributed_coherence_and_condition(torch.from_numpy(whole))
    return out


def test_distributed_equals_the_concatenated_rows() -> None:
    results = distributed.spawn(_on_each_process, MATRICES, world_size=2)
    expected = {name: reference(z) for name, z in MATRICES.items()}
    expected["one empty shard"] = expected["tall"]
    for result in results:
        for name, values in expected.items():
            assert result[name] == pytest.approx(values, rel=1e-7), name
    # What the all-reduce adds: one shard alone has another coherence.
    assert reference(MATRICES["tall"][:1500])[0] != pytest.approx(expected["tall"][0], rel=1e-3)
    # In a single process the distributed function is the Gram path itself.
    assert distributed_coherence_and_condition(MATRICES["rank-8"]) == pytest.approx(expected["rank-8"], rel=1e-7)
