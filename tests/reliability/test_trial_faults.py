"""An exception and an out-of-memory error raised inside the Ray trial worker: the sweep
continues, the trial is retried from its checkpoint when ``search.max_failures`` allows, and a
trial that keeps failing is recorded as ``failed`` with its last metrics, its error in MLflow
(an out-of-memory error says so and what to lower), and is never selected.

The faults are injected for real in the worker processes by a Ray ``worker_process_setup_hook``
(:mod:`tests.reliability._faults`): the engine's per-epoch training raises a ``RuntimeError``,
asks the CPU allocator for an impossible tensor, or raises ``torch.OutOfMemoryError`` (CUDA's).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweeper.config import load_config
from sweeper.selection import select_all
from sweeper.sweep import run_sweep
from sweeper.tracking import STATUS_TAG
from tests.helpers import tiny_config_data
from tests.reliability import _faults

pytestmark = pytest.mark.slow
EPOCHS = 6
KEY = "method.params.cov_weight"
REPO = Path(__file__).resolve().parents[2]


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
            # The workers import the hook from this checkout, like pytest does.
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


def _sweep(tmp_path: Path, name: str, *, values: list[float], max_failures: int):
    data = tiny_config_data(tmp_path, name=name)
    data["search"] |= {"space": {KEY: {"values": values}}, "max_failures": max_failures}
    data["train"] |= {"epochs": EPOCHS, "checkpoint_every": 2}
    return run_sweep(load_config(data=data), verbose=0)


def _trial(result, value: float) -> tuple[str, dict]:
    table = result.table.set_index("trial_id")
    trial_id = table.index[table[KEY] == value][0]
    return trial_id, table.loc[trial_id].to_dict()


def _epochs_reported(result, trial_id: str) -> list[int]:
    (path,) = result.directory.glob(f"train_trial_{trial_id}_*/result.json")
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


def _children(tmp_path: Path, name: str) -> dict[str, dict[str, str]]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    return {r.data.tags["sweeper.trial_id"]: r.data.tags for r in runs if "mlflow.parentRunId" in r.data.tags}


def _select(table) -> dict:
    return select_all(table, params=[KEY], selection_param=KEY, tolerance=0.05, id_dataset="digits")


def _picked(result) -> set[str]:
    """Every trial any rule picked, in the sweep's result and by :mod:`sweeper.selection` anew."""
    picks = [*result.picks.values(), *_select(result.table).values()]
    return {tid for pick in picks for tid in pick.trial_ids}


def _wins_if_eligible(result, trial_id: str) -> bool:
    """Whether RankMe max would pick ``trial_id`` were it ``ok``: its status alone keeps it out."""
    table = result.table.copy()
    table.loc[table["trial_id"] == trial_id, "status"] = "ok"
    return _select(table)["rankme/max"].trial_ids == (trial_id,)


def test_exception_is_retried_and_persistent_oom_fails_unpicked(tmp_path: Path, fault_dir: Path) -> None:
    _faults.write_faults(
        fault_dir,
        [
            {"tag": "exc-once", "key": KEY, "value": 1.0, "epoch": 4, "kind": "exception", "attempts": 1},
            {"tag": "oom-always", "key": KEY, "value": 8.0, "epoch": 4, "kind": "oom", "attempts": None},
        ],
    )
    result = _sweep(tmp_path, "faults-retry", values=[0.0, 1.0, 8.0], max_failures=1)
    assert _faults.fired(fault_dir, "exc-once") == 1
    assert _faults.fired(fault_dir, "oom-always") == 2  # first attempt + the one retry

    ok_id, ok_row = _trial(result, 0.0)
    assert (
        ok_row["status"] == "ok"
        and ok_row["epochs_done"] == EPOCHS
        and _epochs_reported(result, ok_id) == list(range(1, EPOCHS + 1))
    )

    # The exception: retried from its epoch-2 checkpoint (epoch 3 again), not from scratch, then ok.
    retried_id, retried_row = _trial(result, 1.0)
    assert retried_row["status"] == "ok" and retried_row["epochs_done"] == EPOCHS
    assert _faults.epochs_by_process(fault_dir, "exc-once") == [[1, 2, 3, 4], [3, 4, 5, 6]]

    # The out-of-memory error: retried from the checkpoint, failed again, recorded as failed.
    oom_id, oom_row = _trial(result, 8.0)
    assert _faults.epochs_by_process(fault_dir, "oom-always") == [[1, 2, 3, 4], [3, 4]]
    assert oom_row["status"] == "failed" and oom_row["epochs_done"] == 3 < EPOCHS
    assert oom_row["rankme/embedding"] > 0 and oom_row["train/loss"] == oom_row["train/loss"]  # its last metrics
    error = next(result.directory.glob(f"train_trial_{oom_id}_*/error.txt")).read_text()
    assert "TrialOutOfMemoryError: trial ran out of CPU memory" in error and "can't allocate memory" in error
    assert "lower train.batch_size" in error

    children = _children(tmp_path, "faults-retry")
    assert {tags[STATUS_TAG] for tid, tags in children.items() if tid != oom_id} == {"ok"}
    assert children[oom_id][STATUS_TAG] == "failed"
    assert children[oom_id]["sweeper.error"].startswith("TrialOutOfMemoryError: trial ran out of CPU memory")
    assert "sweeper.error" not in children[retried_id]

    assert oom_id not in _picked(result) and _wins_if_eligible(result, oom_id)
    assert (result.directory / "trials.csv").read_text().count("failed") == 1


def test_cuda_oom_without_retries_fails_with_its_last_metrics(tmp_path: Path, fault_dir: Path) -> None:
    _faults.write_faults(
        fault_dir, [{"tag": "cuda-oom", "key": KEY, "value": 8.0, "epoch": 3, "kind": "cuda_oom", "attempts": None}]
    )
    result = _sweep(tmp_path, "faults-no-retry", values=[1.0, 8.0], max_failures=0)
    assert _faults.fired(fault_dir, "cuda-oom") == 1  # no retry

    oom_id, oom_row = _trial(result, 8.0)
    assert oom_row["status"] == "failed" and oom_row["epochs_done"] == 2
    assert oom_row["rankme/embedding"] > 0
    assert _faults.epochs_by_process(fault_dir, "cuda-oom") == [[1, 2, 3]]
    ok_id, ok_row = _trial(result, 1.0)
    assert ok_row["status"] == "ok" and ok_row["epochs_done"] == EPOCHS

    error = _children(tmp_path, "faults-no-retry")[oom_id]["sweeper.error"]
    assert error.startswith("TrialOutOfMemoryError: trial ran out of GPU memory with train.batch_size=128")
    assert "OutOfMemoryError: CUDA out of memory" in error
    assert _picked(result) == {ok_id} and _wins_if_eligible(result, oom_id)
