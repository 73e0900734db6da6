"""Uncertainty from seeds in the selection report (sweeper.report._seeds and its uses): hand-made
trial tables with known means, stds and bootstrap intervals, recomputed here independently."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sweeper import report
from sweeper.report import SweepReport
from tests.test_report import PNG_MAGIC, config, table

COV = "method.params.cov_weight"
LINEAR = "oracle/linear/digits"
RANK = "rankme/embedding"
ALPHA = "label_free/alpha_req"
CLUSTERING = "label_free/self_clustering"
VALUES = (0.0, 1.0, 8.0)
B = 2000
NO_UNCERTAINTY = "no uncertainty known (one seed)"

# Sweep "paired": 3 configurations x 3 seeds whose per-seed accuracies differ by constants
# (multiples of 3/32, so every bootstrap mean is exact in binary floating point).
PAIRED_ACCURACY = {
    0.0: [0.375, 0.75, 0.1875],
    1.0: [0.5625, 0.9375, 0.375],  # + 0.1875: the oracle
    8.0: [0.46875, 0.84375, 0.28125],  # + 0.09375
}
# RankMe max: cov 8 (20.0); plateau (within 5 % of the max): cov 0 comes first (19.5).
PAIRED_RANK = {0.0: [19.5] * 3, 1.0: [10.0] * 3, 8.0: [20.0] * 3}
# α closest to 1: cov 1, the oracle's configuration; lowest self-clustering: cov 0, as the plateau.
PAIRED_ALPHA = {0.0: 2.0, 1.0: 1.0, 8.0: 3.0}
PAIRED_CLUSTERING = {0.0: 0.1, 1.0: 0.5, 8.0: 0.3}

# Sweep "noisy": 3 configurations x 4 seeds, cov 8's last seed failed.
NOISY_ACCURACY = {
    0.0: [0.80, 0.84, 0.78, 0.86],  # mean 0.82
    1.0: [0.83, 0.80, 0.85, 0.81],  # mean 0.8225: the oracle
    8.0: [0.70, 0.72, 0.69, None],
}
# RankMe max and plateau: cov 0; α closest to 1: cov 8; lowest self-clustering: cov 0.
NOISY_RANK = {0.0: [20.0, 19.8, 20.2, 20.0], 1.0: [10.0, 11.0, 9.0, 10.0], 8.0: [19.5, 19.4, 19.6, None]}
NOISY_ALPHA = {0.0: 2.0, 1.0: 3.0, 8.0: 1.1}
NOISY_CLUSTERING = {0.0: 0.1, 1.0: 0.5, 8.0: 0.3}


def seeded_table(accuracy, rank, alpha, clustering) -> pd.DataFrame:
    """One trial per (configuration, seed); a None accuracy is a failed trial."""
    rows = []
    for index, cov in enumerate(accuracy):
        for seed, value in enumerate(accuracy[cov]):
            failed = value is None
            rows.append(
                {
                    "trial_id": f"c{index}s{seed}",
                    COV: cov,
                    "seed": seed,
                    RANK: math.nan if failed else rank[cov][seed],
                    ALPHA: math.nan if failed else alpha[cov],
                    CLUSTERING: math.nan if failed else clustering[cov],
                    LINEAR: math.nan if failed else value,
                    "status": "failed" if failed else "ok",
                    "epochs_done": 2,
                    "wall_s": 1.0,
                }
            )
    return pd.DataFrame(rows)


def seeded_report(tmp_path: Path, name: str, trials: pd.DataFrame, **kwargs) -> SweepReport:
    seeds = int(trials["seed"].max()) + 1
    values = sorted(set(trials[COV]))
    cfg = config(tmp_path, name, search={"space": {COV: {"values": values}}, "num_samples": seeds})
    return SweepReport.build(cfg, trials, **kwargs)


def paired(tmp_path: Path, **kwargs) -> SweepReport:
    trials = seeded_table(PAIRED_ACCURACY, PAIRED_RANK, PAIRED_ALPHA, PAIRED_CLUSTERING)
    return seeded_report(tmp_path, "paired", trials, **kwargs)


def noisy(tmp_path: Path, **kwargs) -> SweepReport:
    trials = seeded_table(NOISY_ACCURACY, NOISY_RANK, NOISY_ALPHA, NOISY_CLUSTERING)
    return seeded_report(tmp_path, "noisy", trials, **kwargs)


def random_sweep(tmp_path: Path) -> tuple[SweepReport, dict, dict]:
    """5 configurations x 8 seeds of continuous values (one failed trial), so that the
    percentiles of the bootstrap depend on the exact draws; returns the report, accuracies, ranks."""
    rng = np.random.default_rng(7)
    grid = (0.0, 0.5, 1.0, 4.0, 8.0)
    accuracy = {cov: list(rng.normal(0.8 + 0.01 * i, 0.02, 8)) for i, cov in enumerate(grid)}
    # RankMe's order differs from the accuracy's at the top: its max is cov 4, the oracle's cov 8.
    rank = {cov: list(rng.normal(level, 1.5, 8)) for cov, level in zip(grid, (10, 11, 12, 14, 13), strict=True)}
    accuracy[1.0][5] = rank[1.0][5] = None
    constant = dict.fromkeys(grid, 0.5)
    return seeded_report(tmp_path, "random", seeded_table(accuracy, rank, constant, constant)), accuracy, rank


def matrix(values: dict) -> np.ndarray:
    """``(configuration, seed)`` array, NaN for a failed trial."""
    return np.array([[math.nan if v is None else v for v in row] for row in values.values()], dtype=float)


def replicate_means(values: np.ndarray) -> np.ndarray:
    """The documented paired bootstrap, replicate by replicate with plain numpy:
    ``default_rng(0).integers(0, S, size=(B, S))``, then each configuration's mean over the
    drawn seeds it has; ``(B, configurations)``."""
    n_seeds = values.shape[1]
    draws = np.random.default_rng(0).integers(0, n_seeds, size=(B, n_seeds))
    means = np.full((B, values.shape[0]), math.nan)
    for b, drawn in enumerate(draws):
        for c in range(values.shape[0]):
            picked = values[c, drawn]
            picked = picked[np.isfinite(picked)]
            if picked.size:
                means[b, c] = picked.mean()
    return means


def percentile(replicates: np.ndarray) -> tuple[float, float]:
    finite = replicates[np.isfinite(replicates)]
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def rows_of(sweep: SweepReport) -> dict[str, dict]:
    return {row["rule"]: row for row in report.summary_rows(sweep)}


# --------------------------------------------------------------------------- one sweep


def test_configuration_mean_and_std_over_seeds_equal_numpy(tmp_path: Path) -> None:
    sweep = noisy(tmp_path)
    assert sweep.n_seeds == 4
    configs = sweep.configurations.set_index(COV)
    for cov, column in ((cov, column) for cov in VALUES for column in (LINEAR, RANK)):
        source = NOISY_ACCURACY if column == LINEAR else NOISY_RANK
        values = np.array([v for v in source[cov] if v is not None], dtype=float)
        assert configs.loc[cov, column] == pytest.approx(np.mean(values), abs=1e-15)
        assert configs.loc[cov, f"{column} std"] == pytest.approx(np.std(values, ddof=1), abs=1e-15)
    assert list(configs["n_seeds"]) == [4, 4, 3]
    # One seed left: the std is unknown, not 0.
    one = noisy(tmp_path).table.assign(status=["ok"] * 9 + ["failed", "failed", "failed"])
    lonely = seeded_report(tmp_path, "lonely", one.drop(index=[10, 11]))
    assert math.isnan(lonely.configurations.set_index(COV).loc[8.0, f"{LINEAR} std"])

    markdown = report.format_summary(sweep)
    assert "#### Configurations (mean ± std over 4 seeds)" in markdown
    expected = f"{100 * np.mean([0.80, 0.84, 0.78, 0.86]):.1f} ± {100 * np.std([0.80, 0.84, 0.78, 0.86], ddof=1):.1f}"
    assert f"| 0 | 4 | 20 ± {np.std(NOISY_RANK[0.0], ddof=1):.2g} |" in markdown
    assert f"| {expected} |" in markdown
    assert "| trial_id |" in markdown  # the per-trial table stays


def test_constant_seed_differences_collapse_the_interval_to_the_point(tmp_path: Path) -> None:
    rows = rows_of(paired(tmp_path))
    # RankMe max picks cov 8: every seed is 0.09375 below the oracle's (cov 1) same seed.
    assert rows["rankme/max"][COV] == 8.0 and rows["rankme/plateau"][COV] == 0.0
    for rule, gap in (("rankme/max", -0.09375), ("rankme/plateau", -0.1875), ("alpha_req/band", 0.0)):
        row = rows[rule]
        assert row[f"gap {LINEAR}"] == gap
        assert row["gap_low"] == row["gap_high"] == gap  # exactly, in every replicate
        assert row["n_seeds"] == 3
    assert rows["rankme/max"]["within_noise"] is False and rows["alpha_req/band"]["within_noise"] is True


def test_gap_interval_is_the_documented_paired_bootstrap(tmp_path: Path) -> None:
    sweep = noisy(tmp_path)
    rows = rows_of(sweep)
    accuracy = matrix(NOISY_ACCURACY)
    means = replicate_means(accuracy)
    oracle = 1  # cov 1 has the highest mean accuracy
    for rule, picked in (("rankme/max", 0), ("alpha_req/band", 2)):
        assert rows[rule][COV] == VALUES[picked]
        assert rows[rule][f"gap {LINEAR}"] == pytest.approx(np.nanmean(accuracy[picked]) - np.nanmean(accuracy[oracle]))
        low, high = percentile(means[:, picked] - means[:, oracle])
        assert (rows[rule]["gap_low"], rows[rule]["gap_high"]) == (
            pytest.approx(low, abs=1e-12),
            pytest.approx(high, abs=1e-12),
        )
    # A replicate is paired: the same seeds for every configuration, so a constant shift of one
    # configuration's seeds (noisy cov 0 vs cov 1 differ by -0.03, +0.04, -0.07, +0.05) stays paired.
    assert rows["rankme/max"]["gap_low"] < 0 < rows["rankme/max"]["gap_high"]
    assert rows["rankme/max"]["within_noise"] is True and rows["alpha_req/band"]["within_noise"] is False
    assert sweep.bootstrap is not None and sweep.bootstrap.shape == (B, 3, len(sweep.seeds.columns))

    # Continuous values over 8 seeds: the percentiles depend on the exact draws.
    sweep, accuracy, _ = random_sweep(tmp_path)
    values = matrix(accuracy)
    means, oracle = replicate_means(values), int(np.argmax(np.nanmean(values, axis=1)))
    for rule, row in rows_of(sweep).items():
        picked = list(accuracy).index(row[COV])
        low, high = percentile(means[:, picked] - means[:, oracle])
        assert (row["gap_low"], row["gap_high"]) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
        assert row["n_seeds"] == (7 if row[COV] == 1.0 else 8), rule


def test_kendall_tau_over_configurations_with_its_bootstrap_interval(tmp_path: Path) -> None:
    sweep, accuracy_values, rank_values = random_sweep(tmp_path)
    corr = report.correlations(sweep).set_index(["metric", "oracle"])
    row = corr.loc[(RANK, LINEAR)]
    rank, accuracy = matrix(rank_values), matrix(accuracy_values)
    point = stats.kendalltau(np.nanmean(rank, axis=1), np.nanmean(accuracy, axis=1))
    assert row["over"] == "configurations" and row["n"] == 5
    assert row["kendall_tau"] == pytest.approx(point.statistic)
    x, y = replicate_means(rank), replicate_means(accuracy)
    taus = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for xs, ys in zip(x, y, strict=True):
            keep = np.isfinite(xs) & np.isfinite(ys)
            constant = keep.sum() < 3 or np.ptp(xs[keep]) == 0 or np.ptp(ys[keep]) == 0
            taus.append(math.nan if constant else stats.kendalltau(xs[keep], ys[keep]).statistic)
    low, high = percentile(np.array(taus))
    assert (row["tau_low"], row["tau_high"]) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    markdown = report.format_summary(sweep)
    assert "Rank-accuracy correlations (5 configurations, means over 8 seeds)" in markdown
    assert row["tau_low"] < row["tau_high"]
    assert f"{point.statistic:+.2f} [{low:+.2f}, {high:+.2f}]" in markdown


def test_kendall_tau_b_equals_scipy_with_ties_and_missing_values() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, size=(200, 7)).astype(float)
    y = rng.integers(0, 4, size=(200, 7)).astype(float)
    x[rng.random(x.shape) < 0.1] = math.nan
    ours = report.kendall_tau_b(x, y)
    for xs, ys, tau in zip(x, y, ours, strict=True):
        keep = np.isfinite(xs) & np.isfinite(ys)
        if keep.sum() < 3 or np.ptp(xs[keep]) == 0 or np.ptp(ys[keep]) == 0:
            assert math.isnan(tau)
        else:
            assert tau == pytest.approx(stats.kendalltau(xs[keep], ys[keep]).statistic)


def test_within_noise_wording_iff_the_interval_contains_zero(tmp_path: Path) -> None:
    seen = set()
    for sweep in (paired(tmp_path), noisy(tmp_path)):
        markdown = report.format_summary(sweep)
        for rule, row in rows_of(sweep).items():
            if rule == "oracle/linear":
                continue
            label = report.rule_label(rule)
            line = next(line for line in markdown.splitlines() if line.startswith(f"- {label}: "))
            contains = row["gap_low"] <= 0 <= row["gap_high"]
            assert row["within_noise"] is contains
            if row[f"gap {LINEAR}"] == 0 and row["gap_low"] == row["gap_high"] == 0:
                assert line == f"- {label}: the oracle's configuration (gap 0)"
                continue
            gap = (
                f"{100 * row[f'gap {LINEAR}']:+.1f} points [{100 * row['gap_low']:+.1f}, {100 * row['gap_high']:+.1f}]"
            )
            assert line.startswith(f"- {label}: {gap}, ")
            assert ("within seed noise (the 95 % interval contains 0)" in line) is contains
            assert ("below the oracle beyond seed noise" in line) is (not contains)
            seen.add(contains)
    assert seen == {True, False}
    assert NO_UNCERTAINTY not in report.format_summary(noisy(tmp_path))


def test_single_seed_sweep_says_no_uncertainty_known(tmp_path: Path) -> None:
    sweep = SweepReport.build(config(tmp_path), table(), directory=tmp_path / "one")
    assert sweep.n_seeds == 1 and sweep.bootstrap is None
    markdown = report.format_summary(sweep)
    # Once per section with an interval (selections, correlations), never a fake interval.
    assert markdown.count(NO_UNCERTAINTY) == 2
    assert "Configurations (mean ± std" not in markdown and "±" not in markdown
    assert not [line for line in markdown.splitlines() if line.startswith("| ") and " [" in line]
    rows = report.summary_rows(sweep)
    assert all(math.isnan(r["gap_low"]) and math.isnan(r["gap_high"]) and r["within_noise"] is None for r in rows)
    corr = report.correlations(sweep)
    assert (corr["over"] == "trials").all() and corr["tau_low"].isna().all()
    files = report.write_report(sweep)
    csv = pd.read_csv(files[1])
    assert {"gap_low", "gap_high", "within_noise", "n_seeds"} <= set(csv.columns)
    assert csv["gap_low"].isna().all() and (csv["n_seeds"] == 1).all()
    assert json.loads(files[2].read_text())["uncertainty"] == NO_UNCERTAINTY
    comparison = report.format_comparison([sweep])
    assert comparison.count(f"No uncertainty known (one seed): {sweep.name}.") == 2  # table, Kendall τ
    assert not [line for line in comparison.splitlines() if line.startswith("| ") and " [" in line]


def test_seeded_report_files_carry_the_intervals(tmp_path: Path) -> None:
    sweep = noisy(tmp_path, directory=tmp_path / "noisy")
    files = report.write_report(sweep)
    csv = pd.read_csv(files[1]).set_index("rule")
    rows = rows_of(sweep)
    for rule in rows:
        assert csv.loc[rule, "gap_low"] == pytest.approx(rows[rule]["gap_low"])
        assert csv.loc[rule, "gap_high"] == pytest.approx(rows[rule]["gap_high"])
        assert bool(csv.loc[rule, "within_noise"]) is rows[rule]["within_noise"]
    assert csv.loc["alpha_req/band", "n_seeds"] == 3 and csv.loc["rankme/max", "n_seeds"] == 4
    document = json.loads(files[2].read_text())
    assert document["n_seeds"] == 4 and document["uncertainty"]["replicates"] == B
    assert len(document["configurations"]) == 3
    assert {"tau_low", "tau_high", "over"} <= set(document["correlations"][0])


# --------------------------------------------------------------------------- comparison


def test_comparison_mean_and_worst_gap_with_intervals(tmp_path: Path) -> None:
    first, second = paired(tmp_path), noisy(tmp_path)
    ranked = report.rule_gaps([first, second])
    # Mean gap, best first; plateau, noise-aware plateau, consensus and self-clustering all pick
    # cov 0 in both sweeps and tie (-0.095): the usual order breaks it. The noise-aware
    # plateau: the seeds' median std/mean of RankMe (0.0082 in noisy, 0 in paired) is below the
    # 5 % tolerance. The consensus (RankMe, α-ReQ, self-clustering): cov 0 has 1 + 1 + 2 of 6
    # points in paired, 2 + 1 + 2 in noisy, more than any other. No gate: no representation rank.
    assert [r.rule for r in ranked] == [
        "oracle/linear",
        "rankme/max",
        "alpha_req/band",
        "rankme/plateau",
        "rankme/noise_plateau",
        "consensus/borda",
        "self_clustering/min",
    ]
    by_rule = {r.rule: r for r in ranked}
    noisy_means = replicate_means(matrix(NOISY_ACCURACY))
    noisy_gap = {"rankme/max": 0, "alpha_req/band": 2, "rankme/plateau": 0}
    paired_gap = {"rankme/max": -0.09375, "alpha_req/band": 0.0, "rankme/plateau": -0.1875}
    for rule, picked in noisy_gap.items():
        gaps = np.array([paired_gap[rule], np.nanmean(matrix(NOISY_ACCURACY)[picked]) - 0.8225])
        result = by_rule[rule]
        assert result.mean == pytest.approx(gaps.mean()) and result.worst == pytest.approx(gaps.min())
        assert result.worst_sweep == ("paired" if gaps[0] < gaps[1] else "noisy")
        # The paired sweep's replicates are constant; average replicate by replicate.
        averaged = (paired_gap[rule] + (noisy_means[:, picked] - noisy_means[:, 1])) / 2
        low, high = percentile(averaged)
        assert (result.low, result.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert (by_rule["rankme/max"].wins, by_rule["rankme/max"].ties, by_rule["rankme/max"].losses) == (1, 1, 0)
    assert (by_rule["alpha_req/band"].wins, by_rule["alpha_req/band"].ties, by_rule["alpha_req/band"].losses) == (
        1,
        0,
        1,
    )
    assert (by_rule["self_clustering/min"].wins, by_rule["self_clustering/min"].ties) == (0, 2)
    for rule in ("rankme/noise_plateau", "consensus/borda"):
        assert by_rule[rule].mean == by_rule["rankme/plateau"].mean
        assert (by_rule[rule].wins, by_rule[rule].ties, by_rule[rule].losses) == (0, 2, 0)
    assert by_rule["rankme/plateau"].wins is None and by_rule["oracle/linear"].wins is None

    markdown = report.format_comparison([first, second])
    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("| selection rule"))
    assert header == "| selection rule | paired | noisy | mean gap | worst gap | vs RankMe plateau (W/T/L) |"
    body = [line for line in lines[lines.index(header) + 2 :]][:7]
    assert [line.split(" | ")[0].removeprefix("| ") for line in body] == [
        "oracle (linear probe, labels)",
        "RankMe max",
        "α-ReQ band (closest to 1)",
        "RankMe plateau",
        "RankMe noise-aware plateau (tolerance ≥ seed spread)",
        "consensus (Borda count of the label-free metrics)",
        "self-clustering min",
    ]
    result = by_rule["rankme/max"]
    cells = body[1].split(" | ")
    assert cells[1] == "53.1 (-9.4 [-9.4, -9.4])"  # paired: exact, the interval collapses
    assert cells[3] == f"-4.8 [{100 * result.low:+.1f}, {100 * result.high:+.1f}]"
    assert cells[4] == "-9.4 (paired)" and cells[5] == "1/1/0 |"
    assert "- RankMe max: below the oracle beyond seed noise in paired; within seed noise in noisy" in markdown
    assert NO_UNCERTAINTY.capitalize() not in markdown


def test_write_comparison_with_seeds_files_and_gap_figure(tmp_path: Path) -> None:
    reports = [paired(tmp_path), noisy(tmp_path)]
    files = report.write_comparison(reports, tmp_path / "cmp")
    names = [p.name for p in files]
    assert names[:4] == ["compare.md", "compare.csv", "compare.json", "compare_gaps.png"]
    assert files[3].read_bytes()[:8] == PNG_MAGIC
    long = pd.read_csv(files[1])
    assert {"gap_low", "gap_high", "within_noise", "n_seeds", "id_std"} <= set(long.columns)
    plateau = long[(long["sweep"] == "paired") & (long["rule"] == "rankme/plateau")].iloc[0]
    assert plateau["gap_low"] == plateau["gap_high"] == plateau["id_gap"] == -0.1875
    document = json.loads(files[2].read_text())
    assert [r["rule"] for r in document["rules"]] == [r.rule for r in report.rule_gaps(reports)]
    assert document["rules"][1]["gaps"]["paired"]["gap_low"] == -0.09375
