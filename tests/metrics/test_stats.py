"""EmbeddingStats over chunks == the direct functions on the stacked matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sweeper.metrics as metrics
from sweeper.metrics import (
    LABEL_FREE_METRICS,
    EmbeddingStats,
    alpha_req,
    classical_rank,
    nesum,
    rankme,
    self_clustering,
    stable_rank,
)

ALL = ("rankme", "classical_rank", "alpha_req", "nesum", "stable_rank", "self_clustering")


def direct(z: torch.Tensor | np.ndarray, rank_range: tuple[int, int] = (10, 100)) -> dict[str, float]:
    fit = alpha_req(z, rank_range=rank_range)
    return {
        "rankme": rankme(z, max_samples=None),
        "classical_rank": float(classical_rank(z)),
        "alpha_req": fit.alpha,
        "alpha_req_r2": fit.r2,
        "nesum": nesum(z),
        "stable_rank": stable_rank(z),
        "self_clustering": self_clustering(z),
    }


def assert_close(got: dict[str, float], want: dict[str, float], rel: float) -> None:
    assert list(got) == list(want)
    for key, value in want.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=rel, abs=1e-12), key


@pytest.fixture
def z() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    k = 160
    spectrum = torch.arange(1, k + 1, dtype=torch.float32) ** -0.7
    return (torch.randn(3000, k, generator=g) * spectrum) @ torch.linalg.qr(torch.randn(k, k, generator=g))[0] + 2.0


def test_chunks_match_direct_functions(z: torch.Tensor) -> None:
    stats = EmbeddingStats(z.shape[1])
    for batch in z.split(256):
        stats.update(batch)
    assert stats.num_samples == len(z)
    assert_close(stats.compute(ALL), direct(z), rel=1e-8)


def test_numpy_batches_and_n_smaller_than_k(z: torch.Tensor) -> None:
    small = z[:100].numpy()  # N < K
    stats = EmbeddingStats(small.shape[1], device="cpu")
    for batch in np.array_split(small, 7):
        stats.update(batch)
    assert_close(stats.compute(ALL, rank_range=(5, 50)), direct(small, rank_range=(5, 50)), rel=1e-7)


def test_low_rank_float32_and_float64() -> None:
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        z = (
            torch.randn(1500, 6, generator=g, dtype=torch.float64)
            @ torch.randn(6, 40, generator=g, dtype=torch.float64)
        ).to(dtype)
        stats = EmbeddingStats(40)
        for batch in z.split(500):
            stats.update(batch)
        out = stats.compute(("rankme", "classical_rank", "stable_rank"))
        assert out["classical_rank"] == classical_rank(z) == 6
        # Only the Gram is available: tiny σ are rounding noise, RankMe stays within 1e-5.
        assert out["rankme"] == pytest.approx(rankme(z), rel=1e-5)
        assert out["stable_rank"] == pytest.approx(stable_rank(z), rel=1e-9)


def test_max_samples_ignores_later_rows(z: torch.Tensor) -> None:
    stats = EmbeddingStats(z.shape[1], max_samples=1000)
    for batch in z.split(300):
        stats.update(batch)
    stats.update(torch.full((5, z.shape[1]), float("nan")))  # past max_samples: ignored
    assert stats.num_samples == 1000
    assert stats.compute(("rankme", "nesum")) == pytest.approx(
        {"rankme": rankme(z[:1000]), "nesum": nesum(z[:1000])}, rel=1e-8
    )


def test_default_max_samples_matches_rankme() -> None:
    assert EmbeddingStats(3).max_samples == 25600


def test_keys_and_order(z: torch.Tensor) -> None:
    stats = EmbeddingStats(z.shape[1])
    stats.update(z[:500])
    assert list(stats.compute()) == ["rankme"]
    assert list(stats.compute(("nesum", "alpha_req", "rankme"))) == [
        "nesum",
        "alpha_req",
        "alpha_req_r2",
        "rankme",
    ]
    assert list(stats.compute("stable_rank")) == ["stable_rank"]


def test_errors(z: torch.Tensor) -> None:
    stats = EmbeddingStats(z.shape[1])
    with pytest.raises(ValueError, match="before any update"):
        stats.compute()
    with pytest.raises(ValueError, match=r"shape \(B, 160\)"):
        stats.update(z[:, :10])
    bad = z[:10].clone()
    bad[3, 3] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        stats.update(bad)
    stats.update(z[:1])
    with pytest.raises(ValueError, match="at least 2 samples"):
        stats.compute(("nesum",))
    stats.update(z[1:50])
    with pytest.raises(ValueError, match="lidar"):
        stats.compute(("lidar",))
    with pytest.raises(ValueError, match="unknown metric"):
        stats.compute(("accuracy",))
    with pytest.raises(ValueError):
        EmbeddingStats(0)


def test_untracked_self_clustering(z: torch.Tensor) -> None:
    stats = EmbeddingStats(z.shape[1], metrics=("rankme", "alpha_req"))
    stats.update(z[:300])
    assert stats.compute(("rankme",))["rankme"] == pytest.approx(rankme(z[:300]), rel=1e-9)
    with pytest.raises(ValueError, match="not tracked"):
        stats.compute(("self_clustering",))


def test_zero_embeddings_follow_direct_conventions() -> None:
    stats = EmbeddingStats(8)
    stats.update(torch.zeros(20, 8))
    out = stats.compute(ALL)
    assert out["rankme"] == 1.0 and out["classical_rank"] == 0.0 and out["stable_rank"] == 1.0
    assert out["nesum"] == 1.0 and out["self_clustering"] == 1.0
    assert math.isnan(out["alpha_req"]) and math.isnan(out["alpha_req_r2"])


def test_public_api() -> None:
    assert LABEL_FREE_METRICS == (
        "rankme",
        "classical_rank",
        "alpha_req",
        "lidar",
        "nesum",
        "stable_rank",
        "self_clustering",
        "coherence",
        "pseudo_condition",
        "intrinsic_dimension",
        "lidar_representation",
    )
    for name in metrics.__all__:
        assert hasattr(metrics, name)
    assert {"rankme", "EmbeddingStats", "LABEL_FREE_METRICS", "lidar"} <= set(metrics.__all__)
