"""Exact distributed label-free metrics: two gloo processes, each with its shard of the rows,
against one process with all of them (no Ray; ``sweeper.distributed.spawn``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from sweeper import distributed
from sweeper.metrics import (
    EmbeddingStats,
    distributed_lidar,
    distributed_rankme,
    distributed_singular_values,
    lidar,
    rankme,
    singular_values,
)
from sweeper.metrics._utils import _float32_gram_singular_values, _Processes

ALL_STATS = ("rankme", "classical_rank", "alpha_req", "nesum", "stable_rank", "self_clustering")


def _embeddings(n: int, k: int, *, decay: float, rank: int | None = None, mean: float = 0.0) -> torch.Tensor:
    """(n, k) float32 rows with singular values ∝ i^-decay (the first ``rank`` only)."""
    generator = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(n, k, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(k, k, generator=generator, dtype=torch.float64))
    sigma = torch.arange(1, k + 1, dtype=torch.float64) ** -decay
    if rank is not None:
        sigma[rank:] = 0.0
    return ((u * sigma) @ v.T * 100.0 + mean).float()


MATRICES = {
    "flat": _embeddings(4096, 64, decay=0.5),
    "steep": _embeddings(4096, 64, decay=5.0),
    "rank-10": _embeddings(4096, 64, decay=0.5, rank=10),
    "float64": _embeddings(4096, 64, decay=1.0).double(),
    "large-mean": _embeddings(4096, 64, decay=0.5, mean=1e3),
}


def _views() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    identity = torch.randn(301, 1, 16, generator=generator)
    return identity + 0.3 * torch.randn(301, 4, 16, generator=generator)


def _on_each_process(matrices: dict[str, torch.Tensor], views: torch.Tensor) -> dict[str, Any]:
    """Every metric from this process's shard (rank 1 of the ``empty`` case gets no rows)."""
    out: dict[str, Any] = {"rank": distributed.rank()}
    for name, z in matrices.items():
        part = z[distributed.shard(len(z))]
        out[f"{name}/rankme"] = distributed_rankme(part)
        out[f"{name}/shard_only"] = rankme(part, max_samples=None)
        out[f"{name}/sv"] = distributed_singular_values(part)
        stats = EmbeddingStats(z.shape[1], max_samples=10**6)
        for block in part.split(500):
            stats.update(block)
        stats.all_reduce()
        out[f"{name}/stats"] = stats.compute(ALL_STATS)
        out[f"{name}/stats_sv"] = stats.singular_values()
    flat = matrices["flat"][distributed.shard(len(matrices["flat"]))]
    out["fast_path_taken"] = _float32_gram_singular_values(flat, transpose=False, processes=_Processes()) is not None
    empty = matrices["flat"] if distributed.rank() == 0 else matrices["flat"][:0]
    stats = EmbeddingStats(64)
    if len(empty):
        stats.update(empty)
    stats.all_reduce()
    out["empty/stats"] = stats.compute(("rankme",))
    out["empty/rankme"] = distributed_rankme(empty)
    out["lidar"] = distributed_lidar(views[distributed.shard(len(views))])
    return out


@pytest.fixture(scope="module")
def results() -> list[dict[str, Any]]:
    return distributed.spawn(_on_each_process, MATRICES, _views(), world_size=2)


def _relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("name", list(MATRICES))
def test_distributed_rankme_equals_rankme_of_the_concatenated_rows(results: list[dict[str, Any]], name: str) -> None:
    expected = rankme(MATRICES[name], max_samples=None)
    for result in results:
        assert _relative(result[f"{name}/rankme"], expected) <= 1e-9, (name, result[f"{name}/rankme"], expected)
    # What the all-reduce adds: each shard alone has another rank.
    assert _relative(results[0][f"{name}/shard_only"], expected) > 1e-6


def test_the_fast_float32_path_runs_on_the_summed_gram(results: list[dict[str, Any]]) -> None:
    assert all(result["fast_path_taken"] for result in results)


@pytest.mark.parametrize("name", list(MATRICES))
def test_distributed_singular_values(results: list[dict[str, Any]], name: str) -> None:
    expected = singular_values(MATRICES[name])
    for result in results:
        for got in (result[f"{name}/sv"], result[f"{name}/stats_sv"]):
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-7 * float(expected[0]))


# σ below the Gram's resolution (~1e-7·σ_max, see EmbeddingStats) are rounding noise, in one
# process as in two: RankMe then agrees to the class's documented 1e-5, not to 1e-9.
BELOW_GRAM_RESOLUTION = {"steep", "rank-10"}


@pytest.mark.parametrize("name", list(MATRICES))
def test_all_reduced_embedding_stats_equal_one_process_with_every_row(results: list[dict[str, Any]], name: str) -> None:
    z = MATRICES[name]
    rel = 1e-5 if name in BELOW_GRAM_RESOLUTION else 1e-9
    stats = EmbeddingStats(z.shape[1], max_samples=10**6)
    for block in z.split(700):
        stats.update(block)
    expected = stats.compute(ALL_STATS)
    for result in results:
        got = result[f"{name}/stats"]
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=rel, abs=1e-12, nan_ok=True), (name, key)


def test_a_process_without_rows_contributes_nothing(results: list[dict[str, Any]]) -> None:
    # Like against like: the all-reduced statistics against the same class fed every row in one
    # process (a Gram path and an SVD differ by float rounding, ~1e-9 here: not what is tested).
    one_process = EmbeddingStats(64)
    one_process.update(MATRICES["flat"])
    expected_stats = one_process.compute(("rankme",))["rankme"]
    expected = rankme(MATRICES["flat"], max_samples=None)
    for result in results:
        assert _relative(result["empty/stats"]["rankme"], expected_stats) <= 1e-12
        # distributed_rankme's float32 Gram path against a float64 SVD: RankMe's documented 1e-6
        # (the rounding depends on the CPU's BLAS kernels); a process adding anything moves it
        # far more (each shard alone is > 1e-6 off: test above).
        assert _relative(result["empty/rankme"], expected) <= 1e-6


def test_distributed_lidar_equals_lidar_of_all_views(results: list[dict[str, Any]]) -> None:
    expected = lidar(_views())
    for result in results:
        assert _relative(result["lidar"], expected) <= 1e-9
    assert _relative(lidar(_views()[:150]), expected) > 1e-6


def test_single_process_collectives_are_the_identity() -> None:
    z = MATRICES["flat"]
    assert distributed_rankme(z) == pytest.approx(rankme(z, max_samples=None), rel=1e-12)
    assert distributed_lidar(_views()) == pytest.approx(lidar(_views()), rel=1e-12)
    stats = EmbeddingStats(64)
    stats.update(z)
    before = stats.compute(("rankme",))
    stats.all_reduce()
    assert stats.compute(("rankme",)) == before
    assert distributed.shard(10) == slice(0, 10)
