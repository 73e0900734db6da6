"""The selection report over hand-made trial tables (sweeper.report): no Ray, no MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sweeper import report
from sweeper.config import load_config
from sweeper.report import SweepReport
from tests.helpers import tiny_config_data

COV = "method.params.cov_weight"
LINEAR, KNN, OOD = "oracle/linear/digits", "oracle/knn/digits", "oracle/linear/ood_mean"
GRID = (0.0, 0.1, 1.0, 4.0, 16.0)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def config(tmp_path: Path, name: str = "hand", **data):
    base = tiny_config_data(tmp_path, name=name)
    base["search"]["space"] = {COV: {"values": list(GRID)}}
    base["evaluation"]["label_free"] = ["rankme", "alpha_req", "self_clustering"]
    for key, value in data.items():
        base[key] = value
    return load_config(data=base)


def table(status=("ok",) * 5, linear=(0.50, 0.80, 0.90, 0.88, 0.85), *, ood: bool = True) -> pd.DataFrame:
    """Five trials along the covariance weight; RankMe plateaus from cov = 1."""
    rows = []
    for i, cov in enumerate(GRID):
        row = {
            "trial_id": f"t{i}",
            COV: cov,
            "rankme/embedding": [3.0, 12.0, 15.8, 15.9, 15.0][i],
            "rankme/embedding_clipped": [3.0, 12.0, 15.8, 15.9, 15.0][i],
            "rankme/representation": [9.0, 40.0, 60.0, 61.0, 58.0][i],
            "label_free/alpha_req": [3.0, 2.0, 1.2, 0.9, 0.7][i],
            "label_free/self_clustering": [0.9, 0.3, 0.1, 0.05, 0.2][i],
            LINEAR: linear[i],
            KNN: [0.40, 0.85, 0.80, 0.86, 0.70][i],
            "status": status[i],
            "epochs_done": 2,
            "wall_s": 1.0,
        }
        if ood:
            row["oracle/linear/inverted"] = [0.20, 0.40, 0.45, 0.50, 0.30][i]
            row[OOD] = row["oracle/linear/inverted"]
        rows.append(row)
    return pd.DataFrame(rows)


def spectra() -> dict[str, list[float]]:
    return {f"t{i}": list(np.geomspace(10.0, 10.0 ** (-i - 1), 16)) for i in range(5)}


# --------------------------------------------------------------------------- summary rows


def test_each_rule_pick_with_accuracies_and_gaps(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    trials = table()
    sweep = SweepReport.build(cfg, trials)
    picks = report.select(trials, cfg)
    assert (
        list(sweep.picks)
        == list(picks)
        == [
            "oracle/linear",
            "oracle/knn",
            "oracle/ood",
            "rankme/max",
            "rankme/plateau",
            "rankme/noise_plateau",
            "rank_gate/representation",
            "consensus/borda",
            "alpha_req/band",
            "self_clustering/min",
        ]
    )
    rows = {row["rule"]: row for row in report.summary_rows(sweep)}
    # oracle: cov 1 (0.90); RankMe max: cov 4 (15.9); plateau within 5 %: 15.8 at cov 1 is the first.
    assert rows["oracle/linear"][COV] == 1.0 and rows["oracle/linear"][LINEAR] == 0.90
    assert rows["rankme/max"][COV] == 4.0
    assert rows["rankme/max"][f"gap {LINEAR}"] == pytest.approx(0.88 - 0.90)
    assert rows["rankme/plateau"][COV] == 1.0 and rows["rankme/plateau"][f"gap {LINEAR}"] == 0.0
    assert rows["rankme/plateau"][f"gap {KNN}"] == pytest.approx(0.80 - 0.86)
    assert rows["rankme/plateau"][f"gap {OOD}"] == pytest.approx(0.45 - 0.50)
    assert rows["oracle/ood"][COV] == 4.0 and rows["oracle/ood"][f"gap {OOD}"] == 0.0
    assert rows["alpha_req/band"][COV] == 4.0  # |0.9 - 1| is the smallest
    assert rows["self_clustering/min"][COV] == 4.0  # lowest self-clustering, not the highest
    assert rows["rankme/noise_plateau"][COV] == 1.0  # one seed: the plain plateau
    # Gate 0.75 x 15.9: cov 0.1, 1, 4, 16 pass; the representation's rank is highest at cov 4.
    assert rows["rank_gate/representation"][COV] == 4.0
    # cov 4 is first on all four metrics (RankMe, representation, α-ReQ, self-clustering): 4 x 4.
    assert rows["consensus/borda"][COV] == 4.0 and rows["consensus/borda"]["value"] == 16.0

    long = {row["rule"]: row for row in report.comparison_rows([sweep])}
    assert long["rankme/plateau"]["id_accuracy"] == 0.90 and long["rankme/plateau"]["id_gap"] == 0.0
    assert long["rankme/max"]["ood_accuracy"] == 0.50 and long["rankme/max"]["ood_gap"] == 0.0
    assert long["rankme/max"]["knn_gap"] == 0.0 and long["oracle/linear"]["knn_gap"] == pytest.approx(-0.06)
    assert json.loads(long["rankme/max"]["params"]) == {COV: 4.0}


def test_accuracies_are_seed_averaged(tmp_path: Path) -> None:
    cfg = config(tmp_path, search={"space": {COV: {"values": [0.0, 1.0]}}, "num_samples": 2})
    trials = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            COV: [0.0, 0.0, 1.0, 1.0],
            "seed": [0, 1, 0, 1],
            "rankme/embedding": [2.0, 3.0, 10.0, 11.0],
            LINEAR: [0.5, 0.7, 0.8, 1.0],
            "status": ["ok"] * 4,
        }
    )
    rows = {row["rule"]: row for row in report.summary_rows(SweepReport.build(cfg, trials))}
    assert rows["rankme/plateau"]["trials"] == "c,d"
    assert rows["rankme/plateau"][LINEAR] == pytest.approx(0.9)
    assert rows["rankme/plateau"][f"gap {LINEAR}"] == 0.0


def test_id_dataset_of_an_imagefolder_is_its_folder_not_an_ood_column(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    (root / "train").mkdir(parents=True)
    cfg = config(tmp_path, data={"dataset": "imagefolder", "root": str(root), "image_size": 8})
    trials = table(ood=False).rename(columns={LINEAR: "oracle/linear/pets", KNN: "oracle/knn/pets"})
    trials.insert(1, "oracle/linear/aaa_ood", 0.1)  # sorts first, is not the ID dataset
    sweep = SweepReport.build(cfg, trials)
    assert report.id_dataset(cfg) == "pets" and sweep.id_metric == "oracle/linear/pets"
    assert sweep.picks["oracle/linear"].metric == "oracle/linear/pets"
    assert sweep.oracle_metrics[:2] == ["oracle/linear/pets", "oracle/knn/pets"]


@pytest.mark.parametrize(("rule", "expected"), [("plateau", ("t2", 1.0, 15.8)), ("max", ("t3", 4.0, 15.9))])
def test_headline_is_the_pick_of_selection_rule(tmp_path: Path, rule: str, expected: tuple) -> None:
    cfg = config(tmp_path, selection={"rule": rule, "param": COV, "tolerance": 0.05})
    sweep = SweepReport.build(cfg, table())
    key, pick = sweep.headline
    assert key == f"rankme/{rule}" and pick is sweep.picks[key]
    trial, cov, rank = expected
    assert (pick.trial_ids, pick.params, pick.value) == ((trial,), {COV: cov}, rank)
    summary = report.format_summary(sweep)
    assert f"Headline pick (selection.rule={rule}): trial {trial} ({COV}={cov:g};" in summary
    assert f"rankme/embedding_clipped = {rank:g})" in summary


@pytest.mark.parametrize(
    ("rule", "key", "expected"),
    [
        ("noise_plateau", "rankme/noise_plateau", ("t2", 1.0, 15.8)),  # one seed: the plain plateau
        ("rank_gate", "rank_gate/representation", ("t3", 4.0, 61.0)),  # no LiDAR: the representation
        ("consensus", "consensus/borda", ("t3", 4.0, 16.0)),  # first on all four metrics: 4 x 4 points
    ],
)
def test_headline_follows_the_combined_rules(tmp_path: Path, rule: str, key: str, expected: tuple) -> None:
    cfg = config(tmp_path, selection={"rule": rule, "tolerance": 0.05})
    assert cfg.selection.param == (COV if rule == "noise_plateau" else None)  # the only searched key
    sweep = SweepReport.build(cfg, table())
    name, pick = sweep.headline
    assert name == key and pick is sweep.picks[key]
    trial, cov, value = expected
    assert (pick.trial_ids, pick.params, pick.value) == ((trial,), {COV: cov}, value)
    summary = report.format_summary(sweep)
    assert f"Headline pick (selection.rule={rule}): trial {trial}" in summary
    # The noise-aware plateau says why it is the plain one (it runs only along selection.param).
    assert ("no seed spread known" in summary) is (rule == "noise_plateau")
    with_lidar = table().assign(**{"label_free/lidar": [9.0, 1.0, 2.0, 3.0, 5.0]})
    gated = SweepReport.build(config(tmp_path, selection={"rule": "rank_gate"}), with_lidar).headline
    assert gated[0] == "rank_gate/lidar" and gated[1].params == {COV: 16.0}  # LiDAR 5 among cov 0.1..16


def test_headline_without_a_ranked_trial(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    unranked = SweepReport.build(cfg, table().drop(columns=["rankme/embedding", "rankme/embedding_clipped"]))
    assert unranked.headline == ("rankme/plateau", None) and "oracle/linear" in unranked.picks
    assert "Headline pick (selection.rule=plateau): none" in report.format_summary(unranked)
    failed = SweepReport.build(cfg, table(status=("failed",) * 5))
    assert failed.headline == ("rankme/plateau", None)
    assert "Headline pick" not in report.format_summary(failed)  # "nothing to select" says it


# --------------------------------------------------------------------------- correlations


def test_correlations_match_scipy_over_eligible_finite_trials(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 12
    trials = pd.DataFrame(
        {
            "trial_id": [f"t{i:02d}" for i in range(n)],
            COV: rng.uniform(0, 4, n),
            "rankme/embedding": rng.uniform(1, 16, n),
            "label_free/alpha_req": rng.uniform(0.2, 3, n),
            LINEAR: rng.uniform(0.3, 0.9, n),
            KNN: rng.uniform(0.3, 0.9, n),
            "status": ["ok"] * 9 + ["diverged", "running", "failed"],
        }
    )
    trials.loc[3, "rankme/embedding"] = math.nan
    trials.loc[5, LINEAR] = math.inf
    cfg = config(tmp_path, search={"space": {COV: {"low": 0.0, "high": 4.0}}, "algorithm": "random"})
    corr = report.correlations(SweepReport.build(cfg, trials)).set_index(["metric", "oracle"])
    ok = trials[trials["status"] == "ok"]
    for metric, values in (
        ("rankme/embedding", ok["rankme/embedding"]),
        ("label_free/alpha_req", ok["label_free/alpha_req"]),
        ("label_free/alpha_req: -abs(α - 1)", -(ok["label_free/alpha_req"] - 1).abs()),
    ):
        for oracle in (LINEAR, KNN):
            keep = np.isfinite(values) & np.isfinite(ok[oracle])
            tau = stats.kendalltau(values[keep], ok[oracle][keep])
            rho = stats.spearmanr(values[keep], ok[oracle][keep])
            row = corr.loc[(metric, oracle)]
            assert row["n"] == keep.sum()
            assert row["kendall_tau"] == pytest.approx(tau.statistic)
            assert row["kendall_p"] == pytest.approx(tau.pvalue)
            assert row["spearman_rho"] == pytest.approx(rho.statistic)
            assert row["spearman_p"] == pytest.approx(rho.pvalue)
    assert corr.loc[("rankme/embedding", LINEAR), "n"] == 7  # 9 ok, one NaN rank, one inf accuracy
    assert "label_free/self_clustering" not in corr.index.get_level_values(0)  # not logged


def test_correlations_need_three_varying_points(tmp_path: Path) -> None:
    trials = table(status=("ok", "ok", "failed", "failed", "failed"))
    corr = report.correlations(SweepReport.build(config(tmp_path), trials))
    assert (corr["n"] == 2).all() and corr["kendall_tau"].isna().all()
    constant = table().assign(**{LINEAR: 0.5})
    corr = report.correlations(SweepReport.build(config(tmp_path), constant))
    assert corr.loc[corr["oracle"] == LINEAR, "spearman_rho"].isna().all()
    assert corr.loc[corr["oracle"] == KNN, "spearman_rho"].notna().all()


def test_correlations_are_computed_once_per_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sweeper.report import _model

    calls = []
    compute = _model._rank_accuracy_correlations
    monkeypatch.setattr(_model, "_rank_accuracy_correlations", lambda r: calls.append(r) or compute(r))
    sweep = SweepReport.build(config(tmp_path), table(), spectra=spectra(), directory=tmp_path / "one")
    report.format_summary(sweep)
    report.write_report(sweep)
    report.format_comparison([sweep, sweep])
    report.write_comparison([sweep], tmp_path / "cmp")
    assert report.correlations(sweep) is report.correlations(sweep) is sweep.correlations
    assert calls == [sweep]


# --------------------------------------------------------------------------- files and plots


def _assert_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] > 300 and image.size[1] > 200


def test_write_report_files_plots_and_json(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    trials = table()
    picks = report.select(trials, cfg)
    files = report.write_report(SweepReport.build(cfg, trials, spectra=spectra(), directory=tmp_path / "out"))
    names = [path.name for path in files]
    assert names == [
        "report.md",
        "report.csv",
        "report.json",
        "rankme_vs_param.png",
        "accuracy_vs_rankme.png",
        "spectra.png",
    ]
    for path in files[3:]:
        _assert_png(path)
    assert not list((tmp_path / "out").glob(".*partial*"))
    markdown = files[0].read_text()
    assert "RankMe plateau" in markdown and "Kendall τ" in markdown and "Spearman ρ" in markdown
    assert "![spectra](spectra.png)" in markdown and "Partly finished" not in markdown
    csv = pd.read_csv(files[1])
    assert list(csv["rule"]) == list(picks) and f"gap {LINEAR}" in csv.columns
    text = files[2].read_text()
    assert "NaN" not in text and "Infinity" not in text
    document = json.loads(text)
    assert document["unfinished"] == 0 and document["plots"] == names[3:]
    assert {row["metric"] for row in document["correlations"]} >= {"rankme/embedding", "label_free/alpha_req"}


def test_every_report_file_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.fstat(fd).st_ino) or fsync(fd))
    sweep = SweepReport.build(config(tmp_path), table(), spectra=spectra(), directory=tmp_path / "out")
    files = report.write_report(sweep)
    assert len(files) == 6  # the three reports and three PNGs, each flushed, then renamed into place
    assert sorted(synced) == sorted(path.stat().st_ino for path in files)
    assert not list((tmp_path / "out").glob(".*partial*"))


def test_plots_are_png_bytes_and_nothing_is_written(tmp_path: Path) -> None:
    from sweeper.report import _plots

    sweep = SweepReport.build(config(tmp_path), table(), spectra=spectra(), directory=tmp_path / "unused")
    for draw in (_plots.along_param_png, _plots.accuracy_vs_rankme_png, _plots.spectra_png):
        png = draw([sweep])
        assert isinstance(png, bytes) and png[:8] == PNG_MAGIC
    assert not (tmp_path / "unused").exists()
    failed = SweepReport.build(config(tmp_path), table(status=("failed",) * 5), spectra=spectra())
    assert [draw([failed]) for draw in (_plots.along_param_png, _plots.spectra_png)] == [None, None]
    written = report.write_report(SweepReport.build(config(tmp_path), table(), directory=tmp_path / "out"))
    assert written[3].read_bytes() == _plots.along_param_png([sweep])  # the same figure, byte for byte


def test_write_report_needs_the_report_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no directory"):
        report.write_report(SweepReport.build(config(tmp_path), table()))


def test_without_spectra_or_eligible_trials_the_plots_are_skipped(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    files = report.write_report(SweepReport.build(cfg, table(), directory=tmp_path / "a"))
    assert "spectra.png" not in [p.name for p in files]
    failed = table(status=("failed",) * 5)
    sweep = SweepReport.build(cfg, failed, spectra=spectra(), directory=tmp_path / "b")
    assert sweep.picks == {} and report.select(failed, cfg) == {}
    files = report.write_report(sweep)
    assert [p.name for p in files] == ["report.md", "report.csv", "report.json"]
    assert "nothing to select" in files[0].read_text()
    empty = SweepReport.build(cfg, pd.DataFrame(), directory=tmp_path / "c")
    assert empty.picks == {}
    assert "(5 trials: 5 not started)" in report.format_summary(empty)
    assert [p.name for p in report.write_report(empty)][:3] == [
        "report.md",
        "report.csv",
        "report.json",
    ]


def test_partly_finished_sweep_says_so_and_picks_among_finished(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    # The oracle's favourite (cov 1) is still running: it cannot be picked yet.
    trials = table(status=("ok", "ok", "running", "ok", "pending"))
    sweep = SweepReport.build(cfg, trials, spectra=spectra(), directory=tmp_path)
    assert sweep.unfinished() == 2
    assert all("t2" not in pick.trial_ids and "t4" not in pick.trial_ids for pick in sweep.picks.values())
    note = "Partly finished: 2 of 5 trials unfinished (1 running, 1 pending)"
    summary = report.format_summary(sweep)
    assert note in summary and "the 3 trials finished with status ok" in summary
    assert "1 unfinished" not in summary
    assert "2 unfinished (partial)" in report.format_comparison([sweep])
    files = report.write_report(SweepReport.build(cfg, trials, spectra=spectra(), directory=tmp_path / "partial"))
    assert json.loads(files[2].read_text())["unfinished"] == 2
    assert note in files[0].read_text()


def test_trials_tune_has_not_created_yet_count_as_unfinished(tmp_path: Path) -> None:
    cfg = config(tmp_path)  # a grid of 5 values: 5 trials expected
    trials = table(status=("ok", "ok", "running", "ok", "ok")).iloc[:3]
    sweep = SweepReport.build(cfg, trials)
    assert (sweep.expected_trials(), sweep.not_started(), sweep.unfinished()) == (5, 2, 3)
    summary = report.format_summary(sweep)
    assert "(5 trials: 2 ok, 1 running, 2 not started)" in summary
    assert "Partly finished: 3 of 5 trials unfinished (1 running, 2 not started)" in summary


def test_comparison_of_several_sweeps(tmp_path: Path) -> None:
    first = SweepReport.build(config(tmp_path, "vicreg-cov"), table(), spectra=spectra(), directory=tmp_path)
    # A second sweep without OOD data where RankMe's plateau misses the oracle by 5 points.
    other = table(linear=(0.5, 0.8, 0.85, 0.88, 0.9), ood=False)
    second = SweepReport.build(config(tmp_path, "other"), other)
    unfinished = table(status=("ok", "ok", "ok", "running", "ok"), ood=False)
    partial = SweepReport.build(config(tmp_path, "partial"), unfinished)
    reports = [first, second, partial]
    markdown = report.format_comparison(reports)
    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("| selection rule"))
    assert (
        header == "| selection rule | vicreg-cov | other | partial | mean gap | worst gap | vs RankMe plateau (W/T/L) |"
    )
    plateau = next(line for line in lines if line.startswith("| RankMe plateau |"))
    # first: 90.0, gap 0 (OOD 45.0, 5 points below the OOD oracle); other: 85.0 (-5.0);
    # partial: 90.0 (+0.0). Single seeds: no intervals.
    assert plateau == (
        "| RankMe plateau | 90.0 (+0.0); OOD 45.0 (-5.0) | 85.0 (-5.0) | 90.0 (+0.0) | -1.7 | -5.0 (other) | - |"
    )
    # RankMe max: cov 4, 2 points below the oracle in the first sweep (a loss against the
    # plateau's 0) and in the other (a win against its -5); in the partial sweep cov 4 is still
    # running and max picks the plateau's cov 1 (a tie).
    best = next(line for line in lines if line.startswith("| RankMe max |"))
    assert (
        best
        == "| RankMe max | 88.0 (-2.0); OOD 50.0 (+0.0) | 88.0 (-2.0) | 90.0 (+0.0) | -1.3 | -2.0 (vicreg-cov) | 1/1/1 |"
    )
    rules = [line.split(" | ")[0].removeprefix("| ") for line in lines[lines.index(header) + 2 :]]
    # Ranked by mean gap: 0, then -1.3 five times (in the usual order; the gate and the
    # consensus pick cov 4, 4 and 1 as max does), -1.7 twice (the noise-aware plateau is the
    # plain one with a single seed), -2.0 and -4.7 (k-NN's oracle: 0.88, 0.88 and, in the
    # partial sweep, 0.80 against linear oracles of 0.90).
    assert rules[:10] == [
        "oracle (linear probe, labels)",
        "RankMe max",
        "RankMe gate (≥ 75 % of max) → RankMe-representation max",
        "consensus (Borda count of the label-free metrics)",
        "α-ReQ band (closest to 1)",
        "self-clustering min",
        "RankMe plateau",
        "RankMe noise-aware plateau (tolerance ≥ seed spread)",
        "oracle (OOD mean, labels)",
        "oracle (k-NN, labels)",
    ]
    assert "No uncertainty known (one seed): vicreg-cov, other, partial." in markdown
    oracle_ood = next(line for line in lines if line.startswith("| oracle (OOD mean, labels) |"))
    assert "| - | - |" in oracle_ood  # no OOD data in the other sweeps
    assert "k-NN accuracy" in markdown and "**1 unfinished (partial)**" in markdown
    assert "Rank correlation" in markdown

    files = report.write_comparison(reports, tmp_path / "cmp")
    assert [p.name for p in files] == [
        "compare.md",
        "compare.csv",
        "compare.json",
        "compare_gaps.png",
        "accuracy_vs_rankme.png",
        "rankme_vs_param.png",
        "spectra.png",
    ]
    for path in files[3:]:
        _assert_png(path)
    long = pd.read_csv(files[1])
    assert len(long) == sum(len(r.picks) for r in reports)
    assert set(long["sweep"]) == {"vicreg-cov", "other", "partial"}
    document = json.loads(files[2].read_text())
    assert [s["unfinished"] for s in document["sweeps"]] == [0, 0, 1]


def test_duplicate_sweep_names_get_distinct_columns(tmp_path: Path) -> None:
    same = SweepReport.build(config(tmp_path), table(ood=False))
    header = next(
        line for line in report.format_comparison([same, same]).splitlines() if line.startswith("| selection")
    )
    assert header == "| selection rule | hand | hand (2) | mean gap | worst gap | vs RankMe plateau (W/T/L) |"


def test_rules_by_trial_and_labels() -> None:
    picks = {
        "oracle/linear": report.Pick("oracle/linear", LINEAR, {COV: 1.0}, ("t2",), 0.9),
        "rankme/plateau": report.Pick("rankme/plateau", "rankme/embedding", {COV: 1.0}, ("t2",), 15.8),
        "lidar/max": report.Pick("lidar/max", "label_free/lidar", {COV: 4.0}, ("t3", "t4"), 3.0),
    }
    assert report.rules_by_trial(picks) == {
        "t2": ["oracle/linear", "rankme/plateau"],
        "t3": ["lidar/max"],
        "t4": ["lidar/max"],
    }
    assert report.rule_label("rankme/plateau") == "RankMe plateau"
    assert report.rule_label("lidar/max") == "lidar max"
