"""Smoke test of the cheapest bench/ functions at tiny size: they run and their figures are sane."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from sweeper.config import load_config

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(BENCH))
    try:
        import eval_cost
        import throughput

        yield throughput, eval_cost
    finally:
        sys.path.remove(str(BENCH))


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(**overrides):
    from _common import QUICKSTART

    return load_config(
        QUICKSTART,
        overrides={
            "data.image_size": 8,
            "model.projector": [32, 16],
            "train.epochs": 2,
            "train.batch_size": 256,
            "train.warmup_epochs": 1,
            "evaluation.every_n_epochs": 2,
            "evaluation.linear_epochs": 5,
            **overrides,
        },
    )


def test_throughput_measures_both_loops_and_their_ratio(bench_modules) -> None:
    throughput, _ = bench_modules
    result = throughput.measure(_tiny(**{"evaluation.oracle": []}), repeats=1, threads=1)
    for side in ("ours", "bare"):
        assert set(result[side]) == {"best", "median", "mean"}
        assert all(0 < value < 1e6 for value in result[side].values())
        assert result[side]["best"] >= result[side]["median"]
    for key, ratio in result["ratio"].items():
        assert ratio == pytest.approx(result["ours"][key] / result["bare"][key])
    # Same model, loss and augmentation: neither loop is an order of magnitude off the other.
    assert 0.2 < result["ratio"]["best"] < 5


def test_eval_cost_times_rankme_and_the_probes_on_one_trained_model(bench_modules) -> None:
    _, eval_cost = bench_modules
    cost = eval_cost.evaluation_costs(_tiny(), repeats=1)
    assert cost["samples"] == 1437  # every digits training image
    for key in ("train_s", "rankme_s", "linear_s", "knn_s"):
        assert 0 < cost[key] < 60, key
    assert 1 <= cost["rankme"] <= 16  # at most the embedding dimension
    assert 0.1 < cost["accuracy"] <= 1  # 10 classes: better than chance
    assert math.isfinite(cost["linear_s"] / cost["rankme_s"])


def test_collapse_bench_runs_a_method_at_a_collapse_setting(bench_modules) -> None:
    import collapse

    method, label, trial = collapse._run("carp", "N_B = K", {"block_size": None}, 1)
    assert (method, label, trial.status, trial.epochs_done) == ("carp", "N_B = K", "ok", 1)
    assert 1 <= trial.metrics["rankme/embedding"] <= 64
    assert 0 < trial.metrics["oracle/knn/digits"] <= 1
    assert set(collapse.COLLAPSE) == {path.stem for path in collapse.DIGITS.glob("*.yaml")}
