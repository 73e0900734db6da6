"""SIGKILL the driver mid-sweep, resume, and check nothing is lost, repeated or duplicated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import tiny_config_data

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 6
CHECKPOINT_EVERY = 2


def _cli(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "sweeper.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def _rows_reported(directory: Path) -> dict[str, list[tuple[int, int]]]:
    """Per trial, (epoch, trial process id) of every result row Ray Tune recorded (in order)."""
    reported = {}
    for result in directory.glob("train_trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        # A trial started but not yet reported: its id from its directory (train_trial_<id>_<n>_...).
        trial_id = rows[0]["trial_id"] if rows else "_".join(result.parent.name.split("_")[2:4])
        reported[trial_id] = [(r["epoch"], r["pid"]) for r in rows]
    return reported


def _epochs_reported(directory: Path) -> dict[str, list[int]]:
    return {trial: [epoch for epoch, _ in rows] for trial, rows in _rows_reported(directory).items()}


def _recorded_finished(directory: Path) -> set[str]:
    """Trials Ray Tune's newest experiment-state snapshot on disk records as TERMINATED."""
    states = sorted(directory.glob("experiment_state-*.json")) if directory.exists() else []
    if not states:
        return set()
    try:
        document = json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # caught mid-write
        return set()
    trials = [json.loads(entry[0]) for entry in document["trial_data"]]
    return {trial["trial_id"] for trial in trials if trial["status"] == "TERMINATED"}


@pytest.mark.slow
def test_sigkill_then_resume_loses_and_repeats_nothing(tmp_path: Path) -> None:
    data = tiny_config_data(tmp_path, name="killed")
    data["search"]["space"] = {"method.params.cov_weight": {"values": [0.0, 0.5, 1.0, 4.0]}}
    data["train"] |= {"epochs": EPOCHS, "checkpoint_every": CHECKPOINT_EVERY}
    data["data"]["image_size"] = 12
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(data))
    directory = tmp_path / "sweeps" / "killed"

    driver = _cli("run", str(config_path), "--quiet", cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        reported = _epochs_reported(directory) if directory.exists() else {}
        midway = [t for t, epochs in reported.items() if epochs and CHECKPOINT_EVERY < epochs[-1] < EPOCHS]
        if _recorded_finished(directory) and midway:
            break
        assert driver.poll() is None, driver.stdout.read()
        time.sleep(0.2)
    else:
        pytest.fail("the sweep never had a finished and a half-done trial at once")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    time.sleep(2)
    before = _epochs_reported(directory)
    pids_before = {pid for rows in _rows_reported(directory).values() for _, pid in rows}
    # Finished = what Ray Tune's experiment state had recorded as TERMINATED when the driver died
    # (a trial that reported its last epoch a moment before the kill may still replay its last
    # checkpoint interval; MLflow keeps one point per epoch either way, checked below).
    finished = _recorded_finished(directory)
    assert finished

    resumed = _cli("resume", str(directory), "--quiet", cwd=tmp_path)
    output, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, output[-4000:]
    after = _epochs_reported(directory)

    # Finished trials are not retrained; interrupted ones continue from a checkpoint epoch (the
    # rows of the resumed processes are told apart by their pid: Tune may rewrite result.json of
    # a trial that restarts from scratch).
    assert len(after) == 4
    for trial_id, epochs in before.items():
        if trial_id in finished:
            assert epochs[-1] == EPOCHS and after[trial_id] == epochs, f"{trial_id} was retrained"
        else:
            new = [epoch for epoch, pid in _rows_reported(directory)[trial_id] if pid not in pids_before]
            assert new[-1] == EPOCHS and new == list(range(new[0], EPOCHS + 1)), new
            assert (new[0] - 1) % CHECKPOINT_EVERY == 0 and new[0] - 1 <= (epochs[-1] if epochs else 0), (epochs, new)

    # MLflow: one parent, one child per trial, each epoch's point exactly once.
    config = yaml.safe_load((directory / "sweeper.yaml").read_text())
    client = MlflowClient(config["tracking"]["uri"])
    experiment = client.get_experiment_by_name("killed")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["sweeper.trial_id"] for r in children) == sorted(after)
    for child in children:
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
        assert steps == list(range(1, EPOCHS + 1)), steps

    table = pd.read_csv(directory / "trials.csv")
    assert len(table) == 4 and set(table["status"]) == {"ok"} and set(table["epochs_done"]) == {EPOCHS}
