"""A worker of a data-parallel trial that dies is covered by ``search.max_failures``: Ray Train
restarts the worker group from the last checkpoint and the trial ends ``ok``, its curves whole.

The fault is injected for real in the Ray Train worker processes (the Ray
``worker_process_setup_hook`` of :mod:`tests.reliability._faults`): a ``RuntimeError`` from the
engine before epoch 4, in the first worker to get there, once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweeper.config import load_config
from sweeper.sweep import run_sweep
from tests.helpers import tiny_config_data
from tests.reliability import _faults

pytestmark = pytest.mark.slow
EPOCHS = 6
KEY = "method.params.cov_weight"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This module's own 2-CPU Ray, whose workers install the fault injector at start-up."""
    ray = pytest.importorskip("ray")
    directory = tmp_path_factory.mktemp("faults")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={
            "worker_process_setup_hook": "tests.reliability._faults.install",
            "env_vars": {
                _faults.ENV: str(directory),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            },
        },
    )
    try:
        yield directory
    finally:
        ray.shutdown()


@pytest.mark.timeout(900)
def test_a_worker_that_dies_is_retried_from_the_checkpoint(tmp_path: Path, fault_dir: Path) -> None:
    _faults.write_faults(
        fault_dir, [{"tag": "worker", "key": KEY, "value": 1.0, "epoch": 4, "kind": "exception", "attempts": 1}]
    )
    data = tiny_config_data(tmp_path, name="ddp-fault")
    data["search"] |= {"space": {KEY: {"values": [1.0]}}, "max_failures": 1, "resources": {"workers": 2, "cpu": 0.5}}
    data["selection"] = {"rule": "max"}
    data["train"] |= {"epochs": EPOCHS, "checkpoint_every": 2}
    result = run_sweep(load_config(data=data), verbose=0)

    assert _faults.fired(fault_dir, "worker") == 1
    (row,) = result.table.to_dict("records")
    assert row["status"] == "ok" and row["epochs_done"] == EPOCHS
    # Two worker processes per attempt; the restarted group began at epoch 3 (checkpoint 2).
    runs = _faults.epochs_by_process(fault_dir, "worker")
    assert len(runs) == 4, runs
    assert all(run[:4] == [1, 2, 3, 4] for run in runs[:2]) and runs[2:] == [[3, 4, 5, 6]] * 2, runs

    (path,) = result.directory.glob("train_trial_*/result.json")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    trained = [r["epoch"] for r in rows if not r.get("replayed")]
    assert trained == [1, 2, 3, 3, 4, 5, 6], trained  # epoch 3 trained twice, 4 once (it failed first)
    assert [r["epoch"] for r in rows if r.get("replayed")] == [1, 2]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddp-fault")
    (child,) = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert child.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
    assert steps == list(range(1, EPOCHS + 1)), steps
