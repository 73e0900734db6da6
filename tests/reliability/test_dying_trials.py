"""A trial process SIGKILLed mid-training: retried from its checkpoint when max_failures allows,
otherwise recorded as failed with the metrics it had, and never selected."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from sweeper.config import load_config
from sweeper.sweep import run_sweep
from tests.helpers import tiny_config_data

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]
EPOCHS = 8


def _kill_first_trial_midway(directory: Path, killed: list[int]) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for result in sorted(directory.glob("train_trial_*_00000_*/result.json")):
            rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
            if rows and 3 <= rows[-1]["epoch"] < EPOCHS:
                os.kill(rows[-1]["pid"], signal.SIGKILL)
                killed.append(rows[-1]["epoch"])
                return
        time.sleep(0.1)


def _sweep(tmp_path: Path, name: str, max_failures: int):
    data = tiny_config_data(tmp_path, name=name)
    data["search"] |= {"space": {"method.params.cov_weight": {"values": [8.0, 1.0]}}, "max_failures": max_failures}
    data["train"] |= {"epochs": EPOCHS, "checkpoint_every": 2}
    data["data"]["image_size"] = 12
    killed: list[int] = []
    killer = threading.Thread(target=_kill_first_trial_midway, args=(tmp_path / "sweeps" / name, killed), daemon=True)
    killer.start()
    result = run_sweep(load_config(data=data), verbose=0)
    killer.join(timeout=5)
    assert killed, "the trial was never caught mid-training"
    return result


def test_killed_trial_is_retried_from_its_checkpoint(tmp_path) -> None:
    result = _sweep(tmp_path, "retried", max_failures=1)
    table = result.table
    assert set(table["status"]) == {"ok"} and set(table["epochs_done"]) == {EPOCHS}
    rows = [
        json.loads(line)
        for path in (tmp_path / "sweeps" / "retried").glob("train_trial_*_00000_*/result.json")
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    epochs = [r["epoch"] for r in rows]
    # The retry is a new process: its first epoch follows a checkpoint epoch (every 2), no later
    # than where the killed process got to (result.json can lag the trial by a report, so the
    # killer may have struck after a newer checkpoint than the epoch it saw), and no epoch is missing.
    restart = next(i for i in range(1, len(rows)) if rows[i]["pid"] != rows[0]["pid"])
    assert (epochs[restart] - 1) % 2 == 0 and epochs[restart] - 1 <= epochs[restart - 1], epochs
    assert set(epochs) == set(range(1, EPOCHS + 1)) and epochs[-1] == EPOCHS, epochs


def test_killed_trial_without_retries_is_failed_and_never_picked(tmp_path) -> None:
    result = _sweep(tmp_path, "failed", max_failures=0)
    table = result.table.set_index("trial_id")
    failed = table[table["status"] == "failed"]
    assert len(failed) == 1
    assert failed["epochs_done"].iloc[0] >= 3 and failed["rankme/embedding"].notna().all()  # its last metrics
    picked = {tid for pick in result.picks.values() for tid in pick.trial_ids}
    assert failed.index[0] not in picked
    assert set(table.loc[table["status"] != "failed", "status"]) == {"ok"}
