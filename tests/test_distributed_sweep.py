"""A sweep of data-parallel trials: 2 trials, each a Ray Train run of 2 CPU workers (gloo)
inside its Tune trial. The driver is SIGKILLed while a trial is past a checkpoint, then
``sweeper resume`` finishes the sweep: every trial exactly once, interrupted ones continued from
their checkpoint epoch, one MLflow parent and two children with every epoch's point exactly
once (none lost either: Train's checkpoint may be ahead of what Tune had recorded)."""

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
WORKERS = 2


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


def _rows(directory: Path) -> dict[str, list[dict]]:
    """Per trial, every result row Ray Tune recorded (rank 0's report of each epoch)."""
    reported = {}
    for result in directory.glob("train_trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if rows:
            reported[rows[0]["trial_id"]] = rows
    return reported


def _recorded_finished(directory: Path) -> set[str]:
    """Trials Ray Tune's newest experiment-state snapshot on disk records as TERMINATED."""
    states = sorted(directory.glob("experiment_state-*.json"))
    if not states:
        return set()
    try:
        document = json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # caught mid-write
        return set()
    trials = [json.loads(entry[0]) for entry in document["trial_data"]]
    return {trial["trial_id"] for trial in trials if trial["status"] == "TERMINATED"}


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_data_parallel_sweep_survives_a_killed_driver(tmp_path: Path) -> None:
    data = tiny_config_data(tmp_path, name="ddp")
    data["search"]["space"] = {"method.params.cov_weight": {"values": [0.0, 1.0]}}
    data["search"]["resources"] = {"workers": WORKERS, "cpu": 0.5}
    data["train"] |= {"epochs": EPOCHS, "checkpoint_every": CHECKPOINT_EVERY}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(data))
    directory = tmp_path / "sweeps" / "ddp"

    driver = _cli("run", str(config_path), "--quiet", cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        midway = [t for t, rows in _rows(directory).items() if CHECKPOINT_EVERY < rows[-1]["epoch"] < EPOCHS]
        if midway:
            break
        assert driver.poll() is None, driver.stdout.read()[-4000:]
        time.sleep(0.2)
    else:
        pytest.fail("no trial got past its first checkpoint")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    time.sleep(2)
    before = _rows(directory)
    pids_before = {row["pid"] for rows in before.values() for row in rows}
    finished = _recorded_finished(directory)

    resumed = _cli("resume", str(directory), "--quiet", cwd=tmp_path)
    output, _ = resumed.communicate(timeout=800)
    assert resumed.returncode == 0, output[-4000:]
    after = _rows(directory)

    assert len(after) == 2
    assert {row["workers"] for rows in after.values() for row in rows} == {WORKERS}
    continued = 0
    for trial_id, rows in before.items():
        epochs = [row["epoch"] for row in rows]
        if trial_id in finished:
            assert [row["epoch"] for row in after[trial_id]] == epochs, f"{trial_id} was retrained"
            continue
        # The resumed Train run first reports its checkpoint's epochs again (Tune may not have
        # recorded the last of them), then trains on from the checkpoint epoch.
        new = [row for row in after[trial_id] if row["pid"] not in pids_before]
        replayed = [row["epoch"] for row in new if row.get("replayed")]
        trained = [row["epoch"] for row in new if not row.get("replayed")]
        start = replayed[-1] if replayed else 0
        assert replayed == list(range(1, start + 1)) and trained == list(range(start + 1, EPOCHS + 1)), new
        assert start % CHECKPOINT_EVERY == 0, start
        # Not from scratch, nor from before the last checkpoint Tune had seen the epoch of.
        assert start >= epochs[-1] // CHECKPOINT_EVERY * CHECKPOINT_EVERY, (epochs, start)
        continued += start >= CHECKPOINT_EVERY
    assert continued >= 1, (before, after)

    config = yaml.safe_load((directory / "sweeper.yaml").read_text())
    client = MlflowClient(config["tracking"]["uri"])
    experiment = client.get_experiment_by_name("ddp")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["sweeper.trial_id"] for r in children) == sorted(after)
    for child in children:
        assert child.info.status == "FINISHED"
        for key in ("train/loss", "rankme/embedding"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert steps == list(range(1, EPOCHS + 1)), (key, steps)
        assert "oracle/linear/digits" in child.data.metrics  # the probes ran (once, on rank 0)

    table = pd.read_csv(directory / "trials.csv")
    assert len(table) == 2 and set(table["status"]) == {"ok"} and set(table["epochs_done"]) == {EPOCHS}
    assert table["rankme/embedding"].notna().all() and table["oracle/linear/digits"].notna().all()
    # The checkpoints are Ray Train's, inside each trial's directory.
    assert all(any(path.glob("train/checkpoint_*")) for path in directory.glob("train_trial_*"))
