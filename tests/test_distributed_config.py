"""Data-parallel trials are refused before anything runs when they cannot work (``workers`` < 1,
a batch that does not split between the workers, more workers than the cluster holds), and
Tune's concurrency accounts for the workers' resources."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sweeper.config import load_config
from sweeper.errors import ConfigError, SweepError
from sweeper.storage import SweepLocation
from sweeper.sweep import _cluster, _tuner
from tests.helpers import tiny_config_data

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, *, batch: int = 128, **resources: Any) -> Any:
    data = tiny_config_data(tmp_path)
    data["search"]["resources"] = resources
    data["train"]["batch_size"] = batch
    return load_config(data=data)


def _nodes(*resources: dict[str, float]) -> list[dict[str, Any]]:
    return [{"Alive": True, "NodeID": f"node-{i}", "Resources": r} for i, r in enumerate(resources)]


def test_workers_must_be_at_least_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"search.resources.workers: Input should be greater than 0"):
        _config(tmp_path, workers=0)


def test_the_batch_must_split_evenly_between_the_workers(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="train.batch_size: 128 does not split evenly between search.resources.workers=3"
    ):
        _config(tmp_path, workers=3)
    data = tiny_config_data(tmp_path)
    data["search"]["resources"] = {"workers": 4}
    data["search"]["space"] = {"train.batch_size": {"values": [64, 96, 90]}}
    data["selection"] = {"rule": "max"}
    with pytest.raises(ConfigError, match="train.batch_size: 90 does not split evenly"):
        load_config(data=data)
    assert _config(tmp_path, workers=4).search.resources.workers == 4


def test_worker_groups_are_counted_node_by_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = _nodes({"CPU": 32, "GPU": 4}, {"CPU": 32, "GPU": 4}, {"CPU": 8})
    monkeypatch.setattr(_cluster.ray, "nodes", lambda: nodes)
    assert _cluster.concurrent_worker_groups(_config(tmp_path, batch=96, workers=3, cpu=8, gpu=1)) == 2  # 8 GPU workers
    assert _cluster.concurrent_worker_groups(_config(tmp_path, workers=8, cpu=8, gpu=1)) == 1
    assert _cluster.concurrent_worker_groups(_config(tmp_path, workers=2, cpu=16, gpu=0)) == 2  # 5 CPU workers
    assert _cluster.concurrent_worker_groups(_config(tmp_path, workers=2, cpu=0.1)) == (320 + 320 + 80) // 2


def test_more_workers_than_the_cluster_holds_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cluster.ray, "nodes", lambda: _nodes({"CPU": 32, "GPU": 4}, {"CPU": 32, "GPU": 4}))
    monkeypatch.setattr(_cluster, "check_shared", lambda storage, nodes: None)  # two fake nodes share tmp_path
    location = SweepLocation.of(tmp_path / "sweeps" / "tiny")
    _cluster.check_cluster(_config(tmp_path, workers=8, cpu=4, gpu=1), location)
    with pytest.raises(SweepError, match=r"16 workers x \(4 CPU \+ 1 GPU\) = 64 CPU \+ 16 GPU per trial.*only 8"):
        _cluster.check_cluster(_config(tmp_path, workers=16, cpu=4, gpu=1), location)
    with pytest.raises(SweepError, match="asks 1 CPU \\+ 8 GPU per worker but the largest node has 32 CPU \\+ 4 GPU"):
        _cluster.check_cluster(_config(tmp_path, workers=2, cpu=1, gpu=8), location)


def test_tune_holds_no_cpu_for_a_trial_waiting_for_its_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cluster.ray, "nodes", lambda: _nodes({"CPU": 32, "GPU": 8}, {"CPU": 32, "GPU": 8}))
    data = tiny_config_data(tmp_path)
    data["search"] |= {"resources": {"workers": 8, "cpu": 4, "gpu": 1}, "max_concurrent": 6, "max_failures": 2}
    config = load_config(data=data)
    request = _tuner._trainable(config).tune_resources_of_test  # type: ignore[attr-defined]
    assert request.required_resources.get("CPU", 0) == 0 and request.required_resources.get("GPU", 0) == 0
    assert _tuner._max_concurrent(config) == 2  # 16 GPUs hold two groups of 8, whatever max_concurrent
    assert _tuner._failure_config(config).max_failures == 0  # Ray Train retries, from its checkpoint
    single = load_config(data=tiny_config_data(tmp_path))
    assert _tuner._max_concurrent(single) == single.search.max_concurrent
    assert _tuner._failure_config(single).max_failures == single.search.max_failures


@pytest.fixture(autouse=True)
def _expose_the_resource_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tune.with_resources`` hides its request in Tune's registry: record it on the trainable."""
    original = _tuner.tune.with_resources

    def with_resources(trainable: Any, resources: Any) -> Any:
        from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

        wrapped = original(trainable, resources)
        wrapped.tune_resources_of_test = resource_dict_to_pg_factory(resources)
        return wrapped

    monkeypatch.setattr(_tuner.tune, "with_resources", with_resources)


def test_the_multi_gpu_example_config(tmp_path: Path) -> None:
    config = load_config(
        REPO / "configs" / "cluster" / "multi_gpu" / "vicreg.yaml", overrides={"data.root": str(tmp_path)}
    )
    assert config.search.resources.workers == 8 and config.search.resources.gpu == 1
    assert config.train.batch_size % config.search.resources.workers == 0


def test_the_cli_refuses_a_trial_bigger_than_the_cluster(tmp_path: Path) -> None:
    workers = (os.cpu_count() or 1) + 1
    data = tiny_config_data(tmp_path)
    data["train"]["batch_size"] = 16 * workers
    data["search"]["resources"] = {"workers": workers, "cpu": 1}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "sweeper.cli", "run", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sweeper: error: search.resources asks"), done.stderr
    assert f"{workers} workers x (1 CPU + 0 GPU)" in lines[0] and "lower search.resources.workers" in lines[0]
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "sweeps").exists() or not any((tmp_path / "sweeps").iterdir())
