"""Selection rules over hand-made trial tables (sweeper.selection)."""

from __future__ import annotations

import ast
import io
import math
from pathlib import Path

import pandas as pd
import pytest

from sweeper import selection
from sweeper.selection import (
    Pick,
    aggregate_seeds,
    gap_to_oracle,
    select_all,
    select_band,
    select_max,
    select_plateau,
)

COV = "method.params.cov_weight"
LR = "train.lr"
RANK = "rankme/embedding"
ALPHA = "label_free/alpha_req"


def trials(rows: list[dict[str, object]]) -> pd.DataFrame:
    """A trial table: ``t0, t1, ...`` ids, status ``ok`` unless given, fixed bookkeeping."""
    records = []
    for i, row in enumerate(rows):
        record: dict[str, object] = {"trial_id": f"t{i}", "status": "ok"}
        record.update(row)
        record.setdefault("epochs_done", 40)
        record.setdefault("wall_s", 1.0)
        records.append(record)
    return pd.DataFrame.from_records(records)


def sweep_1d(values: list[float], grid: tuple[float, ...] = (0.0, 0.01, 0.1, 1.0, 4.0)):
    return trials([{COV: c, RANK: v} for c, v in zip(grid, values, strict=True)])


# --------------------------------------------------------------------------- plateau


@pytest.mark.parametrize(
    ("order", "expected"),
    [("ascending", 0.1), ("descending", 4.0)],
)
@pytest.mark.parametrize("tolerance", [0.0, 0.01])
def test_plateau_of_exact_ties_picks_its_first_value_along_the_order(
    order: str, expected: float, tolerance: float
) -> None:
    table = sweep_1d([1.0, 5.0, 10.0, 10.0, 10.0])
    pick = select_plateau(table, metric=RANK, param=COV, params=[COV], tolerance=tolerance, order=order)
    assert pick is not None
    assert pick.params == {COV: expected}
    assert pick.value == 10.0


@pytest.mark.parametrize(
    ("order", "expected_lr", "expected_value"),
    [("ascending", 1e-3, 99.5), ("descending", 1e-2, 100.0)],
)
def test_plateau_enters_from_either_side(order: str, expected_lr: float, expected_value: float) -> None:
    table = trials([{LR: lr, RANK: v} for lr, v in [(1e-4, 50.0), (1e-3, 99.5), (1e-2, 100.0), (1e-1, 20.0)]])
    pick = select_plateau(table, metric=RANK, param=LR, params=[LR], order=order)
    assert pick is not None
    assert (pick.params[LR], pick.value) == (expected_lr, expected_value)


def test_plateau_starts_before_the_late_maximum() -> None:
    table = sweep_1d([10.0, 60.0, 99.2, 99.6, 100.0])
    plateau = select_plateau(table, metric=RANK, param=COV, params=[COV], tolerance=0.01)
    best = select_max(table, metric=RANK, params=[COV])
    assert plateau is not None and best is not None
    assert plateau.params == {COV: 0.1}
    assert plateau.trial_ids == ("t2",)
    assert best.params == {COV: 4.0}


@pytest.mark.parametrize(
    ("tolerance", "expected"),
    [(0.0, 4.0), (0.007, 1.0), (0.01, 0.1), (0.25, 0.01), (0.5, 0.01), (0.95, 0.0)],
)
def test_plateau_tolerance_is_relative_to_the_maximum_and_inclusive(tolerance: float, expected: float) -> None:
    # max 100: (1 - 0.25) * 100 = 75 exactly, so 75 is on the plateau.
    table = sweep_1d([10.0, 75.0, 99.2, 99.5, 100.0])
    pick = select_plateau(table, metric=RANK, param=COV, params=[COV], tolerance=tolerance)
    assert pick is not None
    assert pick.params == {COV: expected}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # max -1.0: the band is [-1.01, -1.0], below the maximum.
        ([-10.0, -1.005, -1.02, -1.0, -3.0], 0.01),
        # max 0: the band is empty, only the maximum itself qualifies.
        ([-5.0, -0.001, 0.0, 0.0, -1.0], 0.1),
    ],
)
def test_plateau_band_stays_below_a_non_positive_maximum(values: list[float], expected: float) -> None:
    table = sweep_1d(values)
    pick = select_plateau(table, metric=RANK, param=COV, params=[COV], tolerance=0.01)
    assert pick is not None
    assert pick.params == {COV: expected}


def test_plateau_per_slice_of_a_grid_uses_the_slice_of_the_overall_best() -> None:
    grid = {
        # lr 1e-3 holds the overall best (100 at cov 4) and its plateau starts at cov 0.1.
        1e-3: [10.0, 40.0, 99.5, 99.8, 100.0],
        # lr 1e-2 plateaus earlier (cov 0.01) but at a lower rank: not the chosen slice.
        1e-2: [30.0, 90.0, 90.0, 90.0, 89.0],
    }
    covs = (0.0, 0.01, 0.1, 1.0, 4.0)
    table = trials([{COV: c, LR: lr, RANK: v} for lr, vs in grid.items() for c, v in zip(covs, vs, strict=True)])
    pick = select_plateau(table, metric=RANK, param=COV, params=[COV, LR])
    assert pick is not None
    assert pick.params == {COV: 0.1, LR: 1e-3}
    assert pick.value == 99.5

    # The plateau rule also works along the other axis: within cov 4.0's slice, lr 1e-3.
    along_lr = select_plateau(table, metric=RANK, param=LR, params=[COV, LR])
    assert along_lr is not None
    assert along_lr.params == {COV: 4.0, LR: 1e-3}


@pytest.mark.parametrize(("order", "expected"), [("ascending", 0.2), ("descending", 3.1)])
def test_plateau_over_top_trials_for_continuous_optuna_samples(order: str, expected: float) -> None:
    samples = [
        (0.05, 1.3e-3, 80.0),
        (0.7, 2.1e-3, 100.0),
        (3.1, 4.0e-4, 99.8),
        (0.2, 7.0e-4, 99.5),
        (0.01, 5.0e-3, 30.0),
        (5.0, 9.0e-3, 50.0),
    ]
    table = trials([{COV: c, LR: lr, RANK: v} for c, lr, v in samples])
    pick = select_plateau(table, metric=RANK, param=COV, params=[COV, LR], order=order)
    assert pick is not None
    assert pick.params[COV] == expected
    # The plain slice rule would have degenerated into select_max (cov 0.7).
    best = select_max(table, metric=RANK, params=[COV, LR])
    assert best is not None and best.params[COV] == 0.7


@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_plateau_ignores_configurations_without_a_value_of_the_ordered_param(
    order: str,
) -> None:
    table = sweep_1d([100.0, 1.0, 99.5, 2.0, 3.0])
    table[COV] = [None, 0.01, 0.1, 1.0, 4.0]
    pick = select_plateau(table, metric=RANK, param=COV, params=[COV], order=order)
    assert pick is not None
    assert pick.params == {COV: 0.1}


# --------------------------------------------------------------------------- eligibility


@pytest.mark.parametrize("bad_status", ["diverged", "failed", "collapsed", "running"])
@pytest.mark.parametrize("rule", ["max", "plateau", "band"])
def test_ineligible_and_missing_values_are_never_picked(bad_status: str, rule: str) -> None:
    table = trials(
        [
            {COV: 0.0, RANK: 1000.0, ALPHA: 1.0, "status": bad_status},
            {COV: 0.01, RANK: math.nan, ALPHA: math.nan},
            {COV: 0.1, RANK: math.inf, ALPHA: math.inf},
            {COV: 1.0, RANK: 50.0, ALPHA: 0.5},
            {COV: 4.0, RANK: 60.0, ALPHA: 1.75},
        ]
    )
    if rule == "max":
        pick = select_max(table, metric=RANK, params=[COV])
    elif rule == "plateau":
        pick = select_plateau(table, metric=RANK, param=COV, params=[COV], tolerance=0.5)
    else:
        pick = select_band(table, metric=ALPHA, params=[COV])
    assert pick is not None
    assert pick.params == ({COV: 4.0} if rule == "max" else {COV: 1.0})
    assert not {"t0", "t1", "t2"} & set(pick.trial_ids)


@pytest.mark.parametrize(
    "table",
    [
        pd.DataFrame(),
        pd.DataFrame(columns=["trial_id", COV, RANK, ALPHA, "status"]),
        trials([{COV: c, RANK: 5.0, ALPHA: 1.0, "status": "diverged"} for c in (0.0, 1.0)]),
        trials([{COV: c, RANK: math.nan, ALPHA: math.nan} for c in (0.0, 1.0)]),
    ],
    ids=["no-columns", "no-rows", "all-diverged", "all-nan"],
)
def test_no_eligible_value_gives_none(table: pd.DataFrame) -> None:
    assert select_max(table, metric=RANK, params=[COV]) is None
    assert select_plateau(table, metric=RANK, param=COV, params=[COV]) is None
    assert select_band(table, metric=ALPHA, params=[COV]) is None
    picks = select_all(
        table,
        params=[COV],
        selection_param=COV,
        tolerance=0.01,
        label_free=["alpha_req"],
    )
    assert picks == {}


def test_a_configuration_with_one_ineligible_seed_keeps_its_other_seeds() -> None:
    table = trials(
        [
            {COV: 1.0, "seed": 0, RANK: 90.0},
            {COV: 1.0, "seed": 1, RANK: 1000.0, "status": "diverged"},
            {COV: 4.0, "seed": 0, RANK: 80.0},
        ]
    )
    pick = select_max(table, metric=RANK, params=[COV, "seed"])
    assert pick is not None
    assert (pick.params, pick.trial_ids, pick.value) == ({COV: 1.0}, ("t0",), 90.0)


# --------------------------------------------------------------------------- seeds


def test_seeds_are_averaged_before_selection() -> None:
    table = trials(
        [
            {COV: 1.0, "seed": 0, RANK: 100.0},  # one great seed ...
            {COV: 1.0, "seed": 1, RANK: 10.0},  # ... and one bad one: mean 55
            {COV: 4.0, "seed": 0, RANK: 60.0},
            {COV: 4.0, "seed": 1, RANK: 60.0},
        ]
    )
    pick = select_max(table, metric=RANK, params=[COV, "seed"])
    assert pick is not None
    assert pick.params == {COV: 4.0}
    assert pick.trial_ids == ("t2", "t3")
    assert pick.value == 60.0
    # Without declaring the seed, the lucky seed wins: the averaging is what decides.
    unaveraged = select_max(table, metric=RANK, params=[COV, "seed"], seed_keys=())
    assert unaveraged is not None and unaveraged.trial_ids == ("t0",)


def test_aggregate_seeds_groups_averages_and_skips_missing() -> None:
    table = trials(
        [
            {
                COV: 4.0,
                "seed": 0,
                RANK: 10.0,
                "oracle/linear/digits": 0.5,
                "wall_s": 2.0,
            },
            {
                COV: 4.0,
                "seed": 1,
                RANK: math.nan,
                "oracle/linear/digits": 0.75,
                "wall_s": 4.0,
            },
            {COV: 1.0, "seed": 0, RANK: 7.0, "oracle/linear/digits": math.nan},
            {COV: 1.0, "seed": 1, RANK: 9.0, "status": "failed"},
            {
                COV: 4.0,
                "seed": 2,
                RANK: math.inf,
                "oracle/linear/digits": -math.inf,
                "wall_s": 0.0,
            },
        ]
    )
    agg = aggregate_seeds(table, params=[COV, "seed"])
    assert list(agg[COV]) == [1.0, 4.0]
    assert "seed" not in agg.columns and "status" not in agg.columns
    assert list(agg["trial_ids"]) == [("t2",), ("t0", "t1", "t4")]
    assert list(agg["n_trials"]) == [1, 3]
    assert list(agg[RANK]) == [7.0, 10.0]
    assert math.isnan(agg["oracle/linear/digits"].iloc[0])
    assert agg["oracle/linear/digits"].iloc[1] == 0.625
    assert agg["wall_s"].iloc[1] == 2.0  # (2 + 4 + 0) / 3


@pytest.mark.parametrize("params", [[COV], [], ["seed"]], ids=["one-param", "none", "seed"])
def test_single_trial_sweep(params: list[str]) -> None:
    row = {RANK: 12.0, ALPHA: 3.0, "seed": 0}
    if COV in params:
        row[COV] = 0.1
    table = trials([row])
    expected_params = {COV: 0.1} if COV in params else {}
    for pick in (
        select_max(table, metric=RANK, params=params),
        select_band(table, metric=ALPHA, params=params),
    ):
        assert pick is not None
        assert (pick.params, pick.trial_ids) == (expected_params, ("t0",))
    if COV in params:
        plateau = select_plateau(table, metric=RANK, param=COV, params=params)
        assert plateau == Pick("plateau", RANK, {COV: 0.1}, ("t0",), 12.0)


# --------------------------------------------------------------------------- max, band, ties


def test_max_ties_go_to_the_lexicographically_smallest_params() -> None:
    table = trials(
        [
            {COV: 4.0, "opt": "adamw", RANK: 50.0},
            {COV: 1.0, "opt": "sgd", RANK: 50.0},
            {COV: 1.0, "opt": "adamw", RANK: 50.0},
            {COV: 0.1, "opt": "sgd", RANK: 49.0},
        ]
    )
    pick = select_max(table, metric=RANK, params=[COV, "opt"])
    assert pick is not None and pick.params == {COV: 1.0, "opt": "adamw"}
    # Reordering the rows changes nothing.
    shuffled = select_max(table.iloc[::-1], metric=RANK, params=[COV, "opt"])
    assert shuffled == pick


@pytest.mark.parametrize(
    ("alphas", "target", "expected"),
    [
        ([0.4, 0.93, 1.05, 2.0], 1.0, 1.0),  # 1.05 is 0.05 away, 0.93 is 0.07 away
        ([0.4, 0.75, 1.25, 2.0], 1.0, 0.1),  # exact tie: the smaller cov
        ([0.4, 0.75, 1.25, 2.0], 2.0, 4.0),
    ],
)
def test_band_picks_the_value_closest_to_the_target(alphas: list[float], target: float, expected: float) -> None:
    table = trials([{COV: c, ALPHA: a} for c, a in zip((0.01, 0.1, 1.0, 4.0), alphas, strict=True)])
    pick = select_band(table, metric=ALPHA, params=[COV], target=target)
    assert pick is not None
    assert pick.rule == "band"
    assert pick.params == {COV: expected}


# --------------------------------------------------------------------------- select_all, gap


def full_table() -> pd.DataFrame:
    rows = []
    for i, cov in enumerate((0.0, 0.1, 1.0, 4.0)):
        for seed in (0, 1):
            rows.append(
                {
                    COV: cov,
                    "seed": seed,
                    RANK: [10.0, 99.5, 100.0, 100.0][i],
                    "rankme/embedding_clipped": [10.0, 99.5, 100.0, 99.0][i],
                    ALPHA: [3.0, 1.25, 0.5, 1.125][i],
                    "label_free/lidar": [1.0, 2.0, 4.0, 3.0][i],
                    "label_free/nesum": math.nan,
                    "oracle/linear/digits": [0.25, 0.75, 0.5, 0.625][i],
                    "oracle/knn/digits": [0.25, 0.5, 0.875, 0.625][i],
                    "oracle/linear/ood_mean": [0.125, 0.25, 0.5, 0.375][i],
                }
            )
    return trials(rows)


def test_select_all_returns_the_standard_rules() -> None:
    picks = select_all(
        full_table(),
        params=[COV, "seed"],
        selection_param=COV,
        tolerance=0.01,
        label_free=["rankme", "alpha_req", "lidar", "label_free/nesum", "absent"],
        id_dataset="digits",
    )
    assert list(picks) == [
        "oracle/linear",
        "oracle/knn",
        "oracle/ood",
        "rankme/max",
        "rankme/plateau",
        "rankme/noise_plateau",
        "rank_gate/lidar",
        "consensus/borda",
        "alpha_req/band",
        "lidar/max",
    ]
    assert all(pick.rule == rule for rule, pick in picks.items())
    chosen = {rule: pick.params[COV] for rule, pick in picks.items()}
    assert chosen == {
        "oracle/linear": 0.1,
        "oracle/knn": 1.0,
        "oracle/ood": 1.0,
        "rankme/max": 1.0,
        "rankme/plateau": 0.1,
        # Both seeds agree (no spread): the plain plateau's tolerance.
        "rankme/noise_plateau": 0.1,
        # Clipped RankMe >= 75 of 100 keeps 0.1, 1.0, 4.0; LiDAR 2, 4, 3 among them.
        "rank_gate/lidar": 1.0,
        # Borda (4 configurations, 3..0 points): RankMe 1.0 > 0.1 > 4.0 > 0.0, LiDAR 1.0 > 4.0 >
        # 0.1 > 0.0, alpha-ReQ distance 4.0 < 0.1 < 1.0 < 0.0 (NESum all NaN: left out) ->
        # 0.0: 0, 0.1: 2+1+2, 1.0: 3+3+1, 4.0: 1+2+3.
        "consensus/borda": 1.0,
        "alpha_req/band": 4.0,
        "lidar/max": 1.0,
    }
    assert picks["consensus/borda"].value == 7.0
    assert picks["rank_gate/lidar"].value == 4.0
    assert picks["rankme/max"].metric == "rankme/embedding_clipped"
    assert picks["rankme/plateau"].trial_ids == ("t2", "t3")


def test_self_clustering_is_minimised() -> None:
    # 1 = full collapse, 0 = random directions: the rule picks the lowest, never the highest.
    table = full_table()
    table["label_free/self_clustering"] = [0.9, 0.9, 0.05, 0.05, 0.1, 0.2, 0.02, 0.08]
    picks = select_all(
        table, params=[COV, "seed"], selection_param=None, tolerance=0.01, label_free=["self_clustering"]
    )
    assert "self_clustering/max" not in picks
    pick = picks["self_clustering/min"]
    assert pick.params == {COV: 0.1} and pick.value == pytest.approx(0.05)
    assert pick.metric == "label_free/self_clustering"


@pytest.mark.parametrize(
    ("maximum", "tolerance", "expected"),
    [(100.0, 0.01, 99.0), (-2.0, 0.5, -3.0), (0.0, 0.1, 0.0)],
)
def test_plateau_threshold_is_the_band_the_plateau_rule_uses(maximum: float, tolerance: float, expected: float) -> None:
    assert selection.plateau_threshold(maximum, tolerance) == pytest.approx(expected)
    # Just below the edge is off the plateau, the edge itself is on it.
    values = [expected - 1e-9, expected, maximum]
    table = trials([{COV: c, RANK: v} for c, v in zip((0.0, 1.0, 2.0), values, strict=True)])
    pick = select_plateau(table, metric=RANK, param=COV, params=[COV], tolerance=tolerance)
    assert pick is not None and pick.params[COV] == 1.0


def test_select_all_without_optional_inputs_or_clipped_rank() -> None:
    table = full_table()
    table["rankme/embedding_clipped"] = math.nan  # present but empty: fall back
    picks = select_all(table, params=[COV, "seed"], selection_param=None, tolerance=0.01)
    assert list(picks) == ["oracle/ood", "rankme/max", "rank_gate/lidar", "consensus/borda"]
    assert picks["rankme/max"].metric == RANK
    assert picks["rankme/max"].params == {COV: 1.0}  # tie 1.0 / 4.0: the smaller
    # The consensus reads every logged label-free column, named in label_free or not. RankMe
    # ties 1.0 / 4.0 at 100: both get the mean of ranks 1 and 2 (2.5 points of 3).
    # 1.0: 2.5 + LiDAR 3 + alpha-ReQ 1; 4.0: 2.5 + 2 + 3.
    assert picks["consensus/borda"].params == {COV: 4.0} and picks["consensus/borda"].value == 7.5


def test_gap_to_oracle() -> None:
    table = full_table()
    picks = select_all(
        table,
        params=[COV, "seed"],
        selection_param=COV,
        tolerance=0.01,
        id_dataset="digits",
    )
    gaps = gap_to_oracle(table, picks, oracle_metric="oracle/linear/digits", params=[COV, "seed"])
    assert gaps == {
        "oracle/linear": 0.0,
        "oracle/knn": -0.25,
        "oracle/ood": -0.25,
        "rankme/max": -0.25,
        "rankme/plateau": 0.0,
        "rankme/noise_plateau": 0.0,
        "rank_gate/lidar": -0.25,
        "consensus/borda": -0.25,
    }


def test_gap_to_oracle_is_seed_averaged_and_nan_without_oracle_value() -> None:
    table = trials(
        [
            {COV: 1.0, "seed": 0, RANK: 5.0, "oracle/linear/digits": 0.5},
            {COV: 1.0, "seed": 1, RANK: 5.0, "oracle/linear/digits": 1.0},
            {COV: 4.0, "seed": 0, RANK: 9.0, "oracle/linear/digits": 0.25},
            {COV: 0.1, "seed": 0, RANK: 1.0, "oracle/linear/digits": math.nan},
        ]
    )
    params = [COV, "seed"]
    picks = {
        "rank": select_max(table, metric=RANK, params=params),
        "low": Pick("low", RANK, {COV: 0.1}, ("t3",), 1.0),
        "by-params": Pick("x", RANK, {COV: 1.0}, ("not-a-trial",), 5.0),
    }
    gaps = gap_to_oracle(table, picks, oracle_metric="oracle/linear/digits", params=params)
    assert gaps["rank"] == 0.25 - 0.75
    assert math.isnan(gaps["low"])
    assert gaps["by-params"] == 0.0


# --------------------------------------------------------------------------- contracts


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"order": "up"}, ValueError),
        ({"tolerance": -0.1}, ValueError),
        ({"tolerance": math.nan}, ValueError),
        ({"param": "seed"}, ValueError),
        ({"param": "train.wd"}, ValueError),
        ({"metric": "rankme/missing"}, KeyError),
    ],
)
def test_plateau_rejects_bad_arguments(kwargs: dict[str, object], error: type) -> None:
    arguments: dict[str, object] = {
        "metric": RANK,
        "param": COV,
        "params": [COV, "seed"],
        **kwargs,
    }
    table = trials([{COV: 1.0, "seed": 0, RANK: 5.0}])
    with pytest.raises(error):
        select_plateau(table, **arguments)  # type: ignore[arg-type]


def test_module_is_layer_zero() -> None:
    modules: set[str] = set()
    for path in Path(selection.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        modules |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {module.split(".")[0] for module in modules} & {"torch", "ray", "mlflow", "optuna"}
    # Of the package, only the shared names (L0, imports nothing heavy) and its own modules.
    outside = {module for module in modules if module.split(".")[0] == "sweeper"} - {
        f"sweeper.selection.{path.stem}" for path in Path(selection.__file__).parent.glob("_*.py")
    }
    assert outside == {"sweeper.names"}
    assert {
        "Pick",
        "aggregate_seeds",
        "gap_to_oracle",
        "plateau_threshold",
        "select_all",
        "select_band",
        "select_max",
        "select_plateau",
        "select_rank_gate",
        "select_noise_plateau",
        "select_consensus",
        "seed_spread",
    } <= set(selection.__all__)
    assert all(hasattr(selection, name) for name in selection.__all__)


def test_reads_a_trials_csv_round_trip() -> None:
    text = (
        "trial_id,method.params.cov_weight,seed,rankme/embedding,status,epochs_done,wall_s\n"
        "00001,0.1,0,50.0,ok,40,1.0\n"
        "00002,1.0,0,99.5,ok,40,1.0\n"
        "00003,4.0,0,,diverged,3,1.0\n"
        "00004,,0,100.0,ok,40,1.0\n"
    )
    table = pd.read_csv(io.StringIO(text), dtype={"trial_id": str})
    best = select_max(table, metric=RANK, params=[COV, "seed"])
    plateau = select_plateau(table, metric=RANK, param=COV, params=[COV, "seed"])
    assert best == Pick("max", RANK, {COV: None}, ("00004",), 100.0)
    assert plateau == Pick("plateau", RANK, {COV: 1.0}, ("00002",), 99.5)
