"""Confirmation of the top trials (``search.confirm``, ``sweeper confirm``): the top-k
configurations of the headline rule trained again with new seeds, as trials of the same sweep,
picked on seed means; resumable, and refused while another driver runs the sweep."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from sweeper.cli import main
from sweeper.config import load_config
from sweeper.report import SweepReport, format_summary
from sweeper.sweep import SweepError, run_sweep, sweep_location
from sweeper.sweep._claim import claim_sweep
from sweeper.sweep._confirm import CONFIRM_SEED_OFFSET, plan_confirmation, top_configurations
from tests.helpers import child_runs, tiny_config_data

COV = "method.params.cov_weight"
RANK = "rankme/embedding"


def _table(rows: list[tuple[float, float, str]], *, seeds: bool = False) -> pd.DataFrame:
    """A search table: (cov_weight, rankme, status) per trial; with ``seeds``, a seed column
    counting the repeats of each value."""
    records = []
    for index, (cov, rank, status) in enumerate(rows):
        record = {"trial_id": f"t{index:02d}", COV: cov, RANK: rank, "status": status, "phase": "search"}
        if seeds:
            record["seed"] = sum(1 for other, *_ in rows[:index] if other == cov)
        records.append(record)
    return pd.DataFrame.from_records(records)


def _config(tmp_path: Path, rule: str = "max", **confirm):
    data = tiny_config_data(tmp_path, name="plan")
    data["selection"] = {"rule": rule, "param": COV, "tolerance": 0.05}
    data["search"]["confirm"] = confirm or {"top_k": 2, "seeds": 2}
    data["seed"] = 7
    return load_config(data=data)


def test_the_top_configurations_are_the_rules_successive_picks(tmp_path) -> None:
    table = _table(
        [(0.0, 3.0, "ok"), (1.0, 12.0, "ok"), (4.0, 15.0, "ok"), (8.0, 14.0, "ok"), (16.0, 99.0, "diverged")]
    )
    rule, picks = top_configurations(table, _config(tmp_path), top_k=3)
    assert rule == "rankme/max"
    assert [pick.params[COV] for pick in picks] == [4.0, 8.0, 1.0]  # the diverged trial never counts
    # The plateau (5 %): the first value within 5 % of the max, then the same on what is left.
    rule, picks = top_configurations(table, _config(tmp_path, rule="plateau"), top_k=3)
    assert rule == "rankme/plateau"
    assert [pick.params[COV] for pick in picks] == [4.0, 8.0, 1.0]
    table.loc[1, RANK] = 14.6  # within 5 % of the max: 1.0 reaches the plateau first now
    assert [p.params[COV] for p in top_configurations(table, _config(tmp_path, rule="plateau"), top_k=2)[1]] == [
        1.0,
        4.0,
    ]


def test_a_plan_has_top_k_times_seeds_points_with_seeds_no_repeat_reaches(tmp_path) -> None:
    rows = [(0.0, 3.0, "ok"), (1.0, 12.0, "ok"), (4.0, 15.0, "ok"), (4.0, 13.0, "ok"), (8.0, math.nan, "ok")]
    plan = plan_confirmation(_table(rows, seeds=True), _config(tmp_path, top_k=2, seeds=3))
    assert plan.configurations == [{COV: 4.0}, {COV: 1.0}]  # 4.0 on its seed mean 14 > 12; NaN never picked
    seeds = [7 + CONFIRM_SEED_OFFSET + j for j in range(3)]
    assert plan.points == [{COV: 4.0, "seed": s} for s in seeds] + [{COV: 1.0, "seed": s} for s in seeds]
    # Fewer eligible configurations than top_k: all of them, no more.
    only = plan_confirmation(_table([(1.0, 5.0, "ok"), (2.0, 9.0, "failed")]), _config(tmp_path, top_k=3, seeds=1))
    assert only.points == [{COV: 1.0, "seed": 7 + CONFIRM_SEED_OFFSET}]
    # Confirmation trials already in the table are not what the plan ranks.
    table = _table(rows, seeds=True)
    table.loc[len(table)] = {"trial_id": "c0", COV: 0.0, RANK: 99.0, "status": "ok", "phase": "confirm", "seed": 9}
    assert plan_confirmation(table, _config(tmp_path)).configurations == [{COV: 4.0}, {COV: 1.0}]


def test_the_report_says_what_confirmation_cost_and_whether_the_pick_changed(tmp_path) -> None:
    rows = [  # trial, cov_weight, rankme, linear accuracy, phase, seed
        ("a", 0.0, 3.0, 0.5, "search", 0),
        ("b", 1.0, 12.0, 0.8, "search", 0),
        ("c", 8.0, 13.0, 0.7, "search", 0),
        ("d", 8.0, 11.0, 0.7, "confirm", CONFIRM_SEED_OFFSET),
        ("e", 1.0, 12.5, 0.82, "confirm", CONFIRM_SEED_OFFSET),
    ]
    columns = ["trial_id", COV, RANK, "oracle/linear/digits", "phase", "seed"]
    table = pd.DataFrame.from_records(rows, columns=columns).assign(status="ok", epochs_done=2, wall_s=1.0)
    config = _config(tmp_path, top_k=2, seeds=1)
    confirmed = SweepReport.build(config, table)
    assert confirmed.headline[1].params == {COV: 1.0}  # 12.25 on seed means beats 8.0's 12.0
    assert confirmed.before_confirmation.headline[1].params == {COV: 8.0}  # 13 on one seed
    text = format_summary(confirmed)
    assert "2 confirmation trials" in text and "4 trial-epochs on top of the search's 6 (+67 %)" in text
    assert "method.params.cov_weight=1, changed from method.params.cov_weight=8" in text
    search_only = SweepReport.build(config, table[table["phase"] == "search"])
    assert search_only.before_confirmation is None and "Confirmation" not in format_summary(search_only)


def test_bad_confirm_settings_are_one_config_error(tmp_path, capsys) -> None:
    data = tiny_config_data(tmp_path)
    data["search"]["confirm"] = {"top_k": 0}
    with pytest.raises(Exception, match=r"search.confirm.top_k"):
        load_config(data=data)
    assert main(["confirm", str(tmp_path / "nowhere"), "--top-k", "2"]) == 2
    assert "no sweep" in capsys.readouterr().err


def _result_rows(directory: Path) -> dict[str, list]:
    rows = {}
    for path in sorted(directory.glob("**/train_trial_*/result.json")):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows[lines[0]["trial_id"]] = [(row["epoch"], row["train/loss"]) for row in lines]
    return rows


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_confirm_adds_top_k_times_seeds_trials_and_resumes_without_duplicates(tmp_path, capsys) -> None:
    data = tiny_config_data(tmp_path, name="confirm")
    data["train"]["epochs"] = 1
    data["evaluation"]["oracle"] = ["knn"]
    data["selection"] = {"rule": "max"}
    data["search"]["confirm"] = {"top_k": 2, "seeds": 2}
    config = load_config(data=data)
    result = run_sweep(config, verbose=0, progress=False)
    table = result.table
    search, confirm = table[table["phase"] == "search"], table[table["phase"] == "confirm"]
    assert len(search) == 3 and len(confirm) == 2 * 2
    assert set(table["status"]) == {"ok"}
    top = search.sort_values(RANK, ascending=False)[COV].head(2).tolist()
    assert sorted(confirm[COV]) == sorted(top * 2)
    assert sorted(confirm["seed"]) == sorted([CONFIRM_SEED_OFFSET, CONFIRM_SEED_OFFSET + 1] * 2)
    # The pick is decided on seed means: the configuration's trials are all its seeds.
    pick = result.picks["rankme/max"]
    assert len(pick.trial_ids) == 3
    means = table[table[COV].isin(top)].groupby(COV)[RANK].mean()
    assert pick.params[COV] == means.idxmax() and pick.value == pytest.approx(means.max())
    children = child_runs(config, result.parent_run_id)
    assert sorted(c.data.tags["sweeper.trial_id"] for c in children) == sorted(table["trial_id"])
    tagged = sorted(c.data.tags["sweeper.trial_id"] for c in children if c.data.tags.get("sweeper.confirm") == "true")
    assert tagged == sorted(confirm["trial_id"])
    assert all(c.info.status == "FINISHED" for c in children)
    assert "Confirmation" in (result.directory / "report.md").read_text()

    # A resume, and `sweeper confirm` with the same settings, train nothing again.
    before = _result_rows(result.directory)
    assert len(before) == 7
    again = run_sweep(config, resume=True, verbose=0, progress=False)
    assert _result_rows(again.directory) == before
    assert main(["confirm", str(result.directory), "--quiet"]) == 0
    assert _result_rows(result.directory) == before
    assert len(child_runs(config, result.parent_run_id)) == 7
    # Other settings once started: refused, naming the saved ones.
    capsys.readouterr()
    assert main(["confirm", str(result.directory), "--top-k", "3", "--quiet"]) == 2
    assert "started with top_k=2, seeds=2" in capsys.readouterr().err
    assert _result_rows(result.directory) == before


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_sweeper_confirm_on_a_finished_sweep_and_refused_while_it_runs(tmp_path, capsys) -> None:
    data = tiny_config_data(tmp_path, name="later")
    data["train"]["epochs"] = 1
    data["evaluation"]["oracle"] = []
    data["search"]["space"] = {COV: {"values": [1.0, 8.0]}}
    config = load_config(data=data)
    first = run_sweep(config, verbose=0, progress=False)
    assert set(first.table["phase"]) == {"search"}
    location = sweep_location(config)
    claim = claim_sweep(location, name=config.name, resume=True)  # a live driver runs it
    try:
        assert main(["confirm", str(first.directory), "--top-k", "1", "--seeds", "1", "--quiet"]) == 2
        assert "is being run by pid" in capsys.readouterr().err
    finally:
        claim.release()
    assert len(_result_rows(first.directory)) == 2
    assert main(["confirm", str(first.directory), "--top-k", "1", "--seeds", "1", "--quiet"]) == 0
    rows = _result_rows(first.directory)
    assert len(rows) == 3
    saved = load_config(data={**data, "search": {**data["search"], "confirm": {"top_k": 1, "seeds": 1}}})
    with pytest.raises(SweepError, match="already exists"):
        run_sweep(saved, verbose=0, progress=False)
