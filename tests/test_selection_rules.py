"""The combined selection rules (rank gate, noise-aware plateau, Borda consensus) on hand-made
trial tables: ties, NaN, diverged trials and seeds, each expected pick worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sweeper.selection import (
    RANK_GATE,
    seed_spread,
    select_all,
    select_consensus,
    select_max,
    select_noise_plateau,
    select_plateau,
    select_rank_gate,
)

COV = "method.params.cov_weight"
LR = "train.lr"
RANK = "rankme/embedding_clipped"
REPRESENTATION = "rankme/representation"
LIDAR = "label_free/lidar"
ALPHA = "label_free/alpha_req"
COHERENCE = "label_free/coherence"
DIMENSION = "label_free/intrinsic_dimension"


def trials(rows: list[dict[str, object]]) -> pd.DataFrame:
    """A trial table: ``t0, t1, ...`` ids, status ``ok`` unless given."""
    records = []
    for i, row in enumerate(rows):
        record: dict[str, object] = {"trial_id": f"t{i}", "status": "ok", "seed": 0}
        record.update(row)
        records.append(record)
    return pd.DataFrame.from_records(records)


def gate(table: pd.DataFrame, **kwargs: object):
    arguments = {"rank_metric": RANK, "criterion": LIDAR, "params": [COV, "seed"], **kwargs}
    return select_rank_gate(table, **arguments)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- rank gate


def test_rank_gate_keeps_the_healthy_ranks_then_takes_the_best_lidar() -> None:
    # Threshold 0.75 x 100 = 75: cov 1, 4, 16 pass; LiDAR 30, 20, 35 among them -> 16. The
    # highest LiDAR overall (cov 0, rank 10: collapsed) is gated out.
    table = trials(
        [
            {COV: c, RANK: r, LIDAR: lidar}
            for c, r, lidar in zip([0.0, 0.1, 1.0, 4.0, 16.0], [10, 50, 90, 100, 98], [50, 40, 30, 20, 35], strict=True)
        ]
    )
    pick = gate(table)
    assert pick is not None and pick.rule == "rank_gate" and pick.metric == LIDAR
    assert pick.params == {COV: 16.0} and pick.trial_ids == ("t4",) and pick.value == 35.0
    assert "3 of 5 configurations pass" in pick.note
    assert select_max(table, metric=LIDAR, params=[COV, "seed"]).params == {COV: 0.0}  # type: ignore[union-attr]
    assert RANK_GATE == 0.75


def test_rank_gate_threshold_is_inclusive_and_follows_the_gate() -> None:
    table = trials([{COV: c, RANK: r, LIDAR: lidar} for c, r, lidar in [(0.0, 75.0, 9.0), (1.0, 100.0, 1.0)]])
    assert gate(table).params == {COV: 0.0}  # exactly 75 % of the max passes
    assert gate(table, gate=0.76).params == {COV: 1.0}
    assert gate(table, gate=1.0).params == {COV: 1.0}  # only the max itself


def test_rank_gate_ignores_diverged_trials_for_the_gate_and_the_pick() -> None:
    # A diverged trial with a huge rank would gate everything else out; with the best LiDAR it
    # would be picked: it is neither.
    table = trials(
        [
            {COV: 0.0, RANK: 1000.0, LIDAR: 99.0, "status": "diverged"},
            {COV: 1.0, RANK: 80.0, LIDAR: 5.0},
            {COV: 2.0, RANK: 100.0, LIDAR: 3.0},
            {COV: 3.0, RANK: 100.0, LIDAR: 50.0, "status": "running"},
        ]
    )
    assert gate(table).params == {COV: 1.0}


def test_rank_gate_averages_seeds_and_skips_nan() -> None:
    # cov 1: ranks 60 and 100 (mean 80 >= 75: passes though one seed is below), LiDAR mean 6.
    # cov 2: rank 100, LiDAR NaN: passes the gate but has no criterion. cov 3: NaN rank.
    table = trials(
        [
            {COV: 1.0, "seed": 0, RANK: 60.0, LIDAR: 4.0},
            {COV: 1.0, "seed": 1, RANK: 100.0, LIDAR: 8.0},
            {COV: 2.0, RANK: 100.0, LIDAR: math.nan},
            {COV: 3.0, RANK: math.nan, LIDAR: 100.0},
            {COV: 4.0, RANK: 90.0, LIDAR: 5.0},
        ]
    )
    pick = gate(table)
    assert pick.params == {COV: 1.0} and pick.trial_ids == ("t0", "t1") and pick.value == 6.0
    only_nan = trials([{COV: 1.0, RANK: 10.0, LIDAR: math.nan}])
    assert gate(only_nan) is None
    assert gate(trials([{COV: 1.0, RANK: math.nan, LIDAR: 1.0}])) is None


def test_rank_gate_ties_take_the_smaller_parameters() -> None:
    table = trials([{COV: c, RANK: 100.0, LIDAR: 7.0} for c in (4.0, 1.0, 2.0)])
    assert gate(table).params == {COV: 1.0}


def test_rank_gate_rejects_a_gate_outside_the_unit_interval() -> None:
    table = trials([{COV: 1.0, RANK: 1.0, LIDAR: 1.0}])
    for bad in (0.0, -0.5, 1.5, math.nan):
        with pytest.raises(ValueError, match="gate"):
            gate(table, gate=bad)


def test_select_all_gates_on_lidar_when_logged_else_on_the_representation() -> None:
    rows = [
        {COV: c, RANK: r, REPRESENTATION: rep}
        for c, r, rep in zip([0.0, 1.0, 2.0], [10.0, 90.0, 100.0], [500.0, 60.0, 50.0], strict=True)
    ]
    without = select_all(trials(rows), params=[COV, "seed"], selection_param=COV, tolerance=0.01)
    assert "rank_gate/lidar" not in without
    # Representation rank 60 beats 50 among the survivors (cov 0's 500 is gated out).
    assert without["rank_gate/representation"].params == {COV: 1.0}
    assert without["rank_gate/representation"].metric == REPRESENTATION
    with_lidar = trials([{**row, LIDAR: lidar} for row, lidar in zip(rows, [9.0, 1.0, 2.0], strict=True)])
    picks = select_all(with_lidar, params=[COV, "seed"], selection_param=COV, tolerance=0.01)
    assert "rank_gate/representation" not in picks
    assert picks["rank_gate/lidar"].params == {COV: 2.0}
    # A LiDAR column without any finite eligible value counts as not logged.
    empty = trials([{**row, LIDAR: math.nan} for row in rows])
    assert "rank_gate/representation" in select_all(empty, params=[COV, "seed"], selection_param=None, tolerance=0.01)


# --------------------------------------------------------------------------- noise plateau


def noisy_table() -> pd.DataFrame:
    seeds = {0.0: [49.0, 51.0], 1.0: [93.0, 99.0], 2.0: [95.0, 101.0], 3.0: [97.0, 103.0]}
    return trials([{COV: c, "seed": s, RANK: v} for c, values in seeds.items() for s, v in enumerate(values)])


def test_noise_plateau_widens_the_tolerance_to_the_seed_spread() -> None:
    table = noisy_table()
    spreads = [np.std(v, ddof=1) / np.mean(v) for v in ([49, 51], [93, 99], [95, 101], [97, 103])]
    expected = float(np.median(spreads))  # ~ 0.0429
    assert seed_spread(table, metric=RANK, params=[COV, "seed"]) == pytest.approx(expected, rel=1e-12)
    # Means 50, 96, 98, 100. Plain plateau (1 %): 99 -> only cov 3. Noise-aware: 100 (1 - 0.0429)
    # = 95.7 -> cov 1 is the first on it.
    plain = select_plateau(table, metric=RANK, param=COV, params=[COV, "seed"], tolerance=0.01)
    noisy = select_noise_plateau(table, metric=RANK, param=COV, params=[COV, "seed"], tolerance=0.01)
    assert plain.params == {COV: 3.0}
    assert noisy.rule == "noise_plateau" and noisy.params == {COV: 1.0} and noisy.value == 96.0
    assert noisy.trial_ids == ("t2", "t3")
    assert f"{expected:.3g}" in noisy.note and "4 configurations" in noisy.note
    # A configured tolerance above the spread wins: max(0.5, 0.0429) -> threshold 50 (cov 0).
    wide = select_noise_plateau(table, metric=RANK, param=COV, params=[COV, "seed"], tolerance=0.5)
    assert wide.params == {COV: 0.0}


def test_noise_plateau_with_one_seed_is_the_plain_plateau() -> None:
    table = trials([{COV: c, RANK: v} for c, v in zip([0.0, 1.0, 2.0], [10.0, 99.5, 100.0], strict=True)])
    plain = select_plateau(table, metric=RANK, param=COV, params=[COV, "seed"])
    noisy = select_noise_plateau(table, metric=RANK, param=COV, params=[COV, "seed"])
    assert noisy.params == plain.params == {COV: 1.0}
    assert noisy.note.startswith("no seed spread known")
    assert math.isnan(seed_spread(table, metric=RANK, params=[COV, "seed"]))


def test_noise_plateau_spread_skips_diverged_and_nan_seeds() -> None:
    # cov 0's second seed diverged and cov 1's is NaN: one finite seed each, no spread from
    # them. Only cov 2 (98, 102: CV 0.0289) measures the noise.
    table = trials(
        [
            {COV: 0.0, "seed": 0, RANK: 97.5},
            {COV: 0.0, "seed": 1, RANK: 10.0, "status": "diverged"},
            {COV: 1.0, "seed": 0, RANK: 50.0},
            {COV: 1.0, "seed": 1, RANK: math.nan},
            {COV: 2.0, "seed": 0, RANK: 98.0},
            {COV: 2.0, "seed": 1, RANK: 102.0},
        ]
    )
    cv = float(np.std([98.0, 102.0], ddof=1) / 100.0)
    assert seed_spread(table, metric=RANK, params=[COV, "seed"]) == pytest.approx(cv)
    # Threshold 100 (1 - 0.0283) = 97.17: cov 0 (97.5, its ok seed only) is first.
    pick = select_noise_plateau(table, metric=RANK, param=COV, params=[COV, "seed"])
    assert pick.params == {COV: 0.0} and pick.trial_ids == ("t0",)
    assert select_plateau(table, metric=RANK, param=COV, params=[COV, "seed"]).params == {COV: 2.0}


def test_noise_plateau_checks_its_arguments_and_handles_empty_tables() -> None:
    table = noisy_table()
    with pytest.raises(ValueError):
        select_noise_plateau(table, metric=RANK, param="seed", params=[COV, "seed"])
    with pytest.raises(ValueError):
        select_noise_plateau(table, metric=RANK, param=COV, params=[COV, "seed"], order="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        select_noise_plateau(table, metric=RANK, param=COV, params=[COV, "seed"], tolerance=-1.0)
    failed = table.assign(status="failed")
    assert select_noise_plateau(failed, metric=RANK, param=COV, params=[COV, "seed"]) is None


# --------------------------------------------------------------------------- consensus


CRITERIA = {RANK: "max", COHERENCE: "min", ALPHA: "band", DIMENSION: "min"}


def consensus(table: pd.DataFrame, **kwargs: object):
    arguments = {"criteria": CRITERIA, "params": [COV, "seed"], **kwargs}
    return select_consensus(table, **arguments)  # type: ignore[arg-type]


def test_consensus_borda_count_by_hand() -> None:
    # 4 configurations: 3, 2, 1, 0 points per metric.
    #            rank (max)  coherence (min)  alpha (|a-1|)   dimension (min)
    # cov 0       10 -> 0      1.5 -> 2        0.9 (0.1) -> 3   3 -> 3
    # cov 1       80 -> 1      1.2 -> 3        1.5 (0.5) -> 1   9 -> 1
    # cov 2       95 -> 2      4.0 -> 0        0.8 (0.2) -> 2   5 -> 2
    # cov 3      100 -> 3      2.0 -> 1        3.0 (2.0) -> 0  12 -> 0
    # totals:     8, 6, 6, 4 -> cov 0 (the lowest rank wins the vote of the other three).
    table = trials(
        [
            {COV: c, RANK: r, COHERENCE: co, ALPHA: a, DIMENSION: d}
            for c, r, co, a, d in [
                (0.0, 10.0, 1.5, 0.9, 3.0),
                (1.0, 80.0, 1.2, 1.5, 9.0),
                (2.0, 95.0, 4.0, 0.8, 5.0),
                (3.0, 100.0, 2.0, 3.0, 12.0),
            ]
        ]
    )
    pick = consensus(table)
    assert pick.rule == "consensus" and pick.metric == "consensus/borda"
    assert pick.params == {COV: 0.0} and pick.value == 8.0
    assert "4 metrics" in pick.note and "coherence" in pick.note


def test_consensus_ties_go_to_the_earlier_value_along_the_parameter() -> None:
    # Two metrics that disagree exactly: the three configurations get 2 + 0, 1 + 1 and 0 + 2
    # points, all 2: the order along cov decides.
    table = trials(
        [{COV: c, RANK: r, COHERENCE: co} for c, r, co in [(2.0, 3.0, 3.0), (1.0, 2.0, 2.0), (4.0, 1.0, 1.0)]]
    )
    criteria = {RANK: "max", COHERENCE: "min"}
    assert consensus(table, criteria=criteria, param=COV).params == {COV: 1.0}
    assert consensus(table, criteria=criteria, param=COV, order="descending").params == {COV: 4.0}
    assert consensus(table, criteria=criteria).params == {COV: 1.0}  # no param: smallest params
    assert consensus(table, criteria=criteria).value == 2.0


def test_consensus_param_ties_put_missing_values_last() -> None:
    table = trials([{COV: c, RANK: 5.0} for c in (None, 3.0)])
    pick = consensus(table, criteria={RANK: "max"}, param=COV, order="descending")
    assert pick.params == {COV: 3.0} and pick.value == 0.5  # equal values share ranks 1 and 2


def test_consensus_nan_gets_the_lowest_points_and_empty_metrics_are_left_out() -> None:
    # Rank: cov 0 NaN -> 0 points, cov 2 (60) 2, cov 1 (50) 1. Coherence (min): cov 1 (1.0) 2,
    # cov 0 (2.0) 1, cov 2 (3.0) 0. Dimension all NaN: left out.
    table = trials(
        [
            {COV: 0.0, RANK: math.nan, COHERENCE: 2.0, DIMENSION: math.nan},
            {COV: 1.0, RANK: 50.0, COHERENCE: 1.0, DIMENSION: math.nan},
            {COV: 2.0, RANK: 60.0, COHERENCE: 3.0, DIMENSION: math.nan},
        ]
    )
    pick = consensus(table, criteria={RANK: "max", COHERENCE: "min", DIMENSION: "min"})
    # cov 0: 0 + 1, cov 1: 1 + 2, cov 2: 2 + 0.
    assert pick.params == {COV: 1.0} and pick.value == 3.0
    assert "2 metrics" in pick.note and "intrinsic_dimension" not in pick.note
    assert consensus(trials([{COV: 0.0, RANK: math.nan}]), criteria={RANK: "max"}) is None


def test_consensus_never_picks_a_diverged_trial_and_averages_seeds() -> None:
    table = trials(
        [
            {COV: 0.0, RANK: 1e6, COHERENCE: 0.0, "status": "diverged"},
            {COV: 1.0, "seed": 0, RANK: 10.0, COHERENCE: 5.0},
            {COV: 1.0, "seed": 1, RANK: 30.0, COHERENCE: 1.0},  # means 20, 3
            {COV: 2.0, RANK: 25.0, COHERENCE: 2.0},
        ]
    )
    # Rank: cov 2 (25) > cov 1 (20); coherence: cov 2 (2) < cov 1 (3): cov 2 has both.
    pick = consensus(table, criteria={RANK: "max", COHERENCE: "min"})
    assert pick.params == {COV: 2.0} and pick.value == 2.0
    assert consensus(table.assign(status="collapsed"), criteria={RANK: "max"}) is None


def test_consensus_matches_an_independent_borda_count() -> None:
    rng = np.random.default_rng(3)
    n = 12
    values = {RANK: rng.normal(50, 10, n), COHERENCE: rng.uniform(1, 5, n), ALPHA: rng.uniform(0, 3, n)}
    values[RANK][[2, 7]] = values[RANK][5]  # ties
    values[COHERENCE][4] = math.nan
    table = trials([{COV: float(i), **{m: float(v[i]) for m, v in values.items()}} for i in range(n)])
    goodness = {RANK: values[RANK], COHERENCE: -values[COHERENCE], ALPHA: -np.abs(values[ALPHA] - 1.0)}
    totals = np.zeros(n)
    for score in goodness.values():
        finite = np.isfinite(score)
        ranks = stats.rankdata(-score[finite], method="average")
        totals[finite] += n - ranks
    pick = consensus(table, criteria={RANK: "max", COHERENCE: "min", ALPHA: "band"})
    assert pick.value == pytest.approx(totals.max())
    assert pick.params == {COV: float(np.argmax(totals))}


def test_consensus_rejects_unknown_directions_and_parameters() -> None:
    table = trials([{COV: 1.0, RANK: 1.0}])
    with pytest.raises(ValueError, match="direction"):
        consensus(table, criteria={RANK: "up"})
    with pytest.raises(ValueError):
        consensus(table, criteria={RANK: "max"}, param=LR)
    assert consensus(table.iloc[:0], criteria={RANK: "max"}) is None


def test_select_all_consensus_reads_every_logged_metric_with_its_direction() -> None:
    # RankMe (clipped) alone favours cov 2; coherence and intrinsic dimension (lower is better)
    # favour cov 0, and they outvote it: cov 0: 0 + 2 + 2 = 4, cov 1: 1 + 1 + 1, cov 2: 2 + 0 + 0.
    rows = [
        {COV: c, RANK: r, "rankme/embedding": r, COHERENCE: co, DIMENSION: d}
        for c, r, co, d in [(0.0, 80.0, 1.1, 4.0), (1.0, 90.0, 1.5, 6.0), (2.0, 100.0, 3.0, 9.0)]
    ]
    picks = select_all(
        trials(rows), params=[COV, "seed"], selection_param=COV, tolerance=0.01, label_free=["coherence"]
    )
    assert picks["consensus/borda"].params == {COV: 0.0} and picks["consensus/borda"].value == 4.0
    assert picks["coherence/min"].params == {COV: 0.0}
    assert "intrinsic_dimension/min" not in picks  # not configured: only the consensus reads it
