"""``sweeper compare`` on a real (tiny) Ray Tune sweep: files, MLflow artifacts and tags, spectra,
several sweeps, a partly finished sweep. One sweep for the whole module."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis

from sweeper import cli, report
from sweeper.config import load_config
from sweeper.sweep import run_sweep, trial_spectra
from tests.helpers import tiny_config_data
from tests.test_engine_ood import _digits_variant

pytestmark = pytest.mark.usefixtures("ray_local")

REPORT_FILES = {
    "trials.csv",
    "report.md",
    "report.csv",
    "report.json",
    "rankme_vs_param.png",
    "accuracy_vs_rankme.png",
    "spectra.png",
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("compare")
    inverted = _digits_variant(tmp_path / "inverted", lambda image: 255 - image, per_split=40)
    data = tiny_config_data(tmp_path)
    data["search"]["space"] = {"method.params.cov_weight": {"values": [0.0, 8.0]}}
    data["evaluation"] |= {
        "label_free": ["rankme", "alpha_req"],
        "linear_epochs": 10,
        "oracle_datasets": [{"dataset": "imagefolder", "root": str(inverted)}],
    }
    config = load_config(data=data)
    return config, run_sweep(config, verbose=0)


def _client(config) -> MlflowClient:
    return MlflowClient(config.tracking.uri)


def _children(config, parent_run_id: str):
    client = _client(config)
    experiment = client.get_experiment_by_name(config.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_run_id]


def test_run_writes_the_report_with_ood_columns_and_spectra(finished) -> None:
    config, result = finished
    assert REPORT_FILES <= {p.name for p in result.directory.iterdir()}
    table = pd.read_csv(result.directory / "trials.csv")
    for column in ("oracle/linear/inverted", "oracle/knn/inverted", "oracle/linear/ood_mean"):
        assert table[column].between(0, 1).all(), column
    assert "oracle/ood" in result.picks

    spectra = trial_spectra(result.directory)
    analysis = ExperimentAnalysis(str(result.directory))
    assert set(spectra) == {trial.trial_id for trial in analysis.trials}
    for trial in analysis.trials:
        values = spectra[trial.trial_id]
        assert values == trial.last_result["spectrum/embedding"]
        assert len(values) == 16 and np.all(np.diff(values) <= 0)  # min(N, K) = K, descending


def test_compare_logs_to_the_parent_run_and_retags_the_children(finished, tmp_path, capsys) -> None:
    config, result = finished
    client = _client(config)
    children = _children(config, result.parent_run_id)
    # A stale selection: every child tagged, plus a rule that no longer exists.
    for child in children:
        client.set_tag(child.info.run_id, "sweeper.selected_by", "stale")
    client.set_tag(result.parent_run_id, "sweeper.pick.gone/max", "x")
    for name in REPORT_FILES:
        (result.directory / name).unlink()

    assert cli.main(["compare", str(result.directory), "--out", str(tmp_path / "one")]) == 0
    out = capsys.readouterr().out
    assert "RankMe plateau" in out and "Kendall τ" in out
    assert f"logged to parent run {result.parent_run_id}" in out
    assert "Oracle vs label-free selection" in out  # --out: the combined report too
    assert REPORT_FILES <= {p.name for p in result.directory.iterdir()}
    assert {"compare.md", "compare.csv", "compare.json"} <= {p.name for p in (tmp_path / "one").iterdir()}

    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "report")}
    assert {f"report/{name}" for name in REPORT_FILES} <= artifacts
    picks = report.select(pd.read_csv(result.directory / "trials.csv"), config)
    parent_tags = client.get_run(result.parent_run_id).data.tags
    assert {k: v for k, v in parent_tags.items() if k.startswith("sweeper.pick.")} == {
        f"sweeper.pick.{rule}": ",".join(pick.trial_ids) for rule, pick in picks.items()
    }
    expected = {trial: ",".join(rules) for trial, rules in report.rules_by_trial(picks).items()}
    tagged = {
        child.data.tags["sweeper.trial_id"]: child.data.tags.get("sweeper.selected_by")
        for child in _children(config, result.parent_run_id)
    }
    assert {trial: rules for trial, rules in tagged.items() if rules is not None} == expected
    assert "stale" not in tagged.values()


def test_compare_several_sweeps_and_a_partly_finished_one(finished, tmp_path, capsys) -> None:
    config, result = finished
    storage = tmp_path / "sweeps"
    copy = shutil.copytree(result.directory, storage / "tiny-copy")
    partial = shutil.copytree(result.directory, storage / "tiny-partial")
    # Mark one trial as unfinished in Tune's saved state, as in a sweep read mid-flight (Tune
    # itself loads a RUNNING trial from disk as PENDING).
    state = next(partial.glob("experiment_state-*.json"))
    document = json.loads(state.read_text())
    trial = json.loads(document["trial_data"][0][0])
    assert trial["status"] == "TERMINATED"
    trial["status"] = "PENDING"
    document["trial_data"][0][0] = json.dumps(trial)
    state.write_text(json.dumps(document))
    client = _client(config)
    experiment = client.get_experiment_by_name("tiny").experiment_id
    runs_before = len(client.search_runs([experiment]))

    names = ["tiny-copy", "tiny-partial"]
    assert cli.main(["compare", *names, "--storage-path", str(storage), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "Partly finished: 1 of 2 trials unfinished (1 running)" in out  # it has reported epochs
    assert "**1 unfinished (partial)**" in out
    assert out.count("not logged:") == 2 and "has no parent run 'tiny-copy'" in out
    assert "| selection rule | tiny-copy | tiny-partial | mean gap |" in out
    assert "OOD" in out
    combined = tmp_path / "cmp"
    for name in ("accuracy_vs_rankme.png", "rankme_vs_param.png", "spectra.png"):
        assert (combined / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    long = pd.read_csv(combined / "compare.csv")
    assert set(long["sweep"]) == {"tiny-copy", "tiny-partial"}
    assert json.loads((partial / "report.json").read_text())["unfinished"] == 1
    assert (copy / "report.md").is_file()
    # Nothing was created in the tracking store for the sweeps it does not know.
    assert len(client.search_runs([experiment])) == runs_before
    assert client.get_experiment_by_name("tiny-copy") is None


def test_compare_unknown_sweep_is_a_one_line_error(tmp_path, capsys) -> None:
    assert cli.main(["compare", "nope", "--storage-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sweeper: error: no sweep 'nope'")
