"""The MLflow server stops mid-sweep and comes back: trials keep training, every metric point
lands once it is back, and none is logged twice."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import tiny_config_data
from tests.servers import free_port, start_mlflow, stop

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
EPOCHS = 8


def test_metrics_survive_a_tracking_outage(tmp_path: Path) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    root = tmp_path / "server"
    root.mkdir()
    server = start_mlflow(root, port)
    data = tiny_config_data(tmp_path, name="outage")
    data["search"]["space"] = {"method.params.cov_weight": {"values": [0.0, 1.0]}}
    data["train"]["epochs"] = EPOCHS
    data["data"]["image_size"] = 12
    data["tracking"]["uri"] = uri
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(
        [sys.executable, "-m", "sweeper.cli", "run", "config.yaml", "--quiet"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = MlflowClient(uri)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # wait for the first points to land
            experiment = client.get_experiment_by_name("outage")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if any("train/loss" in r.data.metrics for r in runs):
                break
            assert driver.poll() is None, driver.stdout.read()
            time.sleep(0.5)
        stop(server)  # the outage
        outage_started = time.monotonic()
        time.sleep(12)
        epochs_during_outage = _epochs_on_disk(tmp_path / "sweeps" / "outage")
        server = start_mlflow(root, port)  # same store, same address
        output, _ = driver.communicate(timeout=400)
        assert driver.returncode == 0, output[-3000:]
        assert time.monotonic() - outage_started > 12
        assert epochs_during_outage > 0, "trials kept training while the server was down"
        _assert_every_point_once(MlflowClient(uri))
    finally:
        driver.kill()
        stop(server)


def _assert_every_point_once(client: MlflowClient) -> None:
    experiment = client.get_experiment_by_name("outage")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 3 and len(children) == 2
    expected = landed = 0
    for child in children:
        assert child.info.status == "FINISHED"
        for key in ("train/loss", "rankme/embedding"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            expected += EPOCHS
            landed += len(steps)
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (key, steps)  # all there, none twice
    assert landed == expected


def _epochs_on_disk(directory: Path) -> int:
    import json

    count = 0
    for result in directory.glob("train_trial_*/result.json"):
        count += sum(1 for line in result.read_text().splitlines() if line.strip() and json.loads(line))
    return count
