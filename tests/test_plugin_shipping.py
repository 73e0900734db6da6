"""User code on every worker: a plugin package that only the driver can import (it lies in a
directory on the driver's sys.path, which is neither its working directory nor its script's, the
two Ray adds to the workers' path) reaches the trials of a two-node cluster through the job's
runtime_env ``py_modules``, and the trials import Ray's shipped copy. Without shipping, the sweep
is refused before any trial, in one line naming the module, the node and where the driver
imports it from; ``sweeper check --address`` shows what each node imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml
from ray.cluster_utils import Cluster

import sweeper.sweep._run
from sweeper.config import load_config
from sweeper.sweep import SweepError, run_sweep
from tests.helpers import tiny_config_data
from tests.servers import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
MODULE = "shipped_plugin"

# A data-set factory: only trials call it (the checks import it without loading data), so what it
# records is where the trial processes imported the package from.
PLUGIN = '''
"""Scikit-learn's digits as a data-set plugin that records where each call imported it from."""

import os
from pathlib import Path

import torch

import sweeper

LOG = Path({log!r})


@sweeper.register_dataset("shipped_digits")
def shipped_digits(*, image_size: int):
    with LOG.open("a") as log:
        log.write(f"{{os.getpid()}} {{__file__}}\\n")
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images[:, None] / 16.0, dtype=torch.float32)
    labels = torch.tensor(digits.target)
    return (images[:1400], labels[:1400]), (images[1400:], labels[1400:])
'''


@pytest.fixture(scope="module")
def cluster():
    """Two nodes on this machine; no driver connected (each sweep connects, and ships, itself)."""
    # The head's agent off Ray's fixed default port, which another Ray on this machine may hold.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "dashboard_agent_listen_port": free_port()})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> tuple[Path, Path]:
    """The plugin package (its directory) and the log its factory appends to."""
    root = tmp_path_factory.mktemp("elsewhere")
    log = root / "imports.log"
    package = root / "plugins" / MODULE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(PLUGIN.format(log=str(log)))
    return package, log


@pytest.fixture
def importable(plugin, monkeypatch) -> Path:
    """The plugin's directory on this process's sys.path only (not on PYTHONPATH, which the
    cluster's processes inherited when it started)."""
    package, _ = plugin
    driver_dirs = {Path.cwd().resolve(), Path(sys.argv[0]).resolve().parent}
    assert package.parent.resolve() not in driver_dirs  # else Ray would put it on the workers' path
    monkeypatch.syspath_prepend(str(package.parent))
    return package


def _config_data(tmp_path: Path, name: str) -> dict:
    data = tiny_config_data(tmp_path, name=name)
    data["plugins"] = [MODULE]
    data["data"] = {"dataset": "shipped_digits", "image_size": 8}
    data["search"]["space"]["method.params.cov_weight"]["values"] = [0.0, 1.0]
    data["train"]["epochs"] = 1
    data["evaluation"] |= {"oracle": ["knn"], "rankme_samples": 500}
    return data


def _records(log: Path) -> list[tuple[int, Path]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [(int(pid), Path(file)) for pid, file in (line.split(" ", 1) for line in lines)]


def test_the_trials_import_the_copy_ray_shipped(tmp_path, cluster, plugin, importable) -> None:
    _, log = plugin
    before = len(_records(log))
    config = load_config(data=_config_data(tmp_path, "shipped"))
    assert config.data.dataset == f"{MODULE}:shipped_digits"  # the canonical target the trials import

    result = run_sweep(config, address=cluster.address, progress=False)

    assert list(result.table["status"]) == ["ok", "ok"]
    calls = _records(log)[before:]
    assert len({pid for pid, _ in calls}) >= 2, calls  # each trial's process loaded its data
    for pid, file in calls:
        assert pid != os.getpid()
        assert "runtime_resources" in file.parts, file  # Ray's copy, unpacked on the node
        assert not file.resolve().is_relative_to(importable.parent.resolve()), file
        assert file.name == "__init__.py" and file.parent.name == MODULE


def test_without_shipping_it_is_refused_before_any_trial(tmp_path, cluster, plugin, importable, monkeypatch) -> None:
    _, log = plugin
    before = len(_records(log))
    monkeypatch.setattr(sweeper.sweep._run, "plugin_runtime_env", lambda config: None)
    config = load_config(data=_config_data(tmp_path, "not-shipped"))

    with pytest.raises(SweepError) as refused:
        run_sweep(config, address=cluster.address, progress=False)

    message = str(refused.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"plugins[0]: module '{MODULE}' not found on node "), message
    assert f"(it imports on the driver from {importable.resolve()}: it was not shipped;" in message
    assert len(_records(log)) == before  # no trial started
    sweeps = tmp_path / "sweeps"
    assert not sweeps.exists() or not any(sweeps.iterdir())
    assert not (tmp_path / "mlflow.db").exists()
    assert not ray.is_initialized()


def test_sweeper_check_on_the_cluster_shows_each_nodes_copy(tmp_path, cluster, plugin) -> None:
    package, _ = plugin
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_config_data(tmp_path, "checked")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(package.parent)])}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "sweeper.cli", "check", str(path), "--address", cluster.address],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    nodes = [line for line in lines if line.startswith("node ")]
    assert len(nodes) == 2, done.stdout
    plugin_lines = [line.strip() for line in lines if line.strip().startswith(f"plugin   {MODULE} ")]
    assert len(plugin_lines) == 3, done.stdout  # this machine, then each node
    assert f"imported from {package / '__init__.py'}" in plugin_lines[0]
    assert all("runtime_resources" in line and str(package) not in line for line in plugin_lines[1:]), done.stdout
    assert "registers dataset shipped_digits" in plugin_lines[0]
    assert lines[-1].endswith("import and fit here and on 2 node(s) of " + cluster.address), done.stdout
    assert not (tmp_path / "sweeps").exists()
