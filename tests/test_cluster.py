"""A sweep on a two-node Ray cluster (ray.cluster_utils.Cluster on this machine): trials land
on both nodes, and losing the worker node mid-sweep still ends with every trial finished."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from sweeper.config import load_config
from sweeper.sweep import SweepError, run_sweep
from tests.helpers import tiny_config_data

pytestmark = pytest.mark.slow
EPOCHS = 10


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    try:
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()


def _rows(directory: Path) -> list[dict]:
    rows = []
    for result in directory.glob("train_trial_*/result.json"):
        rows += [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
    return rows


def test_trials_use_both_nodes_and_survive_losing_one(tmp_path, cluster) -> None:
    cluster_, worker = cluster
    data = tiny_config_data(tmp_path, name="two-nodes")
    data["search"] |= {
        "space": {"method.params.cov_weight": {"values": [0.0, 0.5, 1.0, 4.0]}},
        "max_failures": 3,
    }
    data["train"] |= {"epochs": EPOCHS, "checkpoint_every": 2}
    data["data"]["image_size"] = 12
    config = load_config(data=data)
    directory = tmp_path / "sweeps" / "two-nodes"
    removed = threading.Event()

    def remove_worker_once_it_checkpointed() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            latest: dict[str, dict] = {}
            for row in _rows(directory):
                latest[row["trial_id"]] = max(latest.get(row["trial_id"], row), row, key=lambda r: r["epoch"])
            # A trial on the worker that checkpointed at least once and has enough epochs left to
            # be surely still running when the node goes (result.json lags the trial a little).
            if any(r.get("node_id") == worker.node_id and 2 <= r["epoch"] <= EPOCHS - 5 for r in latest.values()):
                cluster_.remove_node(worker)
                removed.set()
                return
            time.sleep(0.2)

    killer = threading.Thread(target=remove_worker_once_it_checkpointed, daemon=True)
    killer.start()
    result = run_sweep(config, verbose=0)
    killer.join(timeout=5)

    assert removed.is_set(), "no trial ever ran on the worker node"
    rows = _rows(directory)
    assert len({r["node_id"] for r in rows}) == 2  # both nodes trained trials
    table = result.table
    assert len(table) == 4
    assert set(table["status"]) == {"ok"} and set(table["epochs_done"]) == {EPOCHS}
    # The trials cut off with the node moved to the head and continued from a checkpoint.
    moved = [t for t in table["trial_id"] if len({r["node_id"] for r in rows if r["trial_id"] == t}) == 2]
    assert moved, "no trial moved off the removed node"
    for trial in moved:
        trial_rows = [r for r in rows if r["trial_id"] == trial]
        first_after = next(r["epoch"] for r in trial_rows if r["node_id"] != worker.node_id)
        assert first_after > 1 and (first_after - 1) % 2 == 0, [r["epoch"] for r in trial_rows]


def test_unsatisfiable_resources_fail_fast(tmp_path, cluster) -> None:
    data = tiny_config_data(tmp_path, name="needs-gpu")
    data["search"]["resources"] = {"cpu": 1, "gpu": 1}
    started = time.monotonic()
    with pytest.raises(SweepError, match=r"1 GPU per trial but the largest node has .* 0 GPU"):
        run_sweep(load_config(data=data), verbose=0)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "sweeps" / "needs-gpu").exists()
    assert not (tmp_path / "mlflow.db").exists()
