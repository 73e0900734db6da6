"""`sweeper submit --wait` against a real Ray head with token authentication and a real
`mlflow server`, both on loopback, started and stopped by this module."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import tiny_config_data
from tests.servers import BIN, free_port, start_mlflow, stop, wait_http

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def token() -> str:
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory, token):
    """A head of its own (`ray start --head --block` in its own session, its own --temp-dir):
    stopped alone at the end, where `ray stop` would stop every Ray on the machine, and never
    recorded in /tmp/ray, where a later bare `ray.init()` would join it."""
    home = tmp_path_factory.mktemp("home")
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-submit-"))  # short: Ray's sockets live in it
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "HOME": str(home),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the job's `python` is this one
    }
    dashboard, gcs = free_port(), free_port()
    start = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--temp-dir={temp_dir}",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--num-cpus=2",
        # Ray's fixed default (52365): a second Ray on this machine holding it leaves this head
        # without a job agent, which refuses every job ("No available agent to submit job").
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        "--include-dashboard=true",
        "--disable-usage-stats",
    ]
    with (home / "ray-start.log").open("ab") as log:
        head = subprocess.Popen(start, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{dashboard}/api/version", timeout=180)
        _wait_for_the_job_agent(f"http://127.0.0.1:{dashboard}", env)
        yield f"http://127.0.0.1:{dashboard}", env, f"127.0.0.1:{gcs}"
    finally:
        stop(head)  # SIGTERM to its session: `ray start --block` stops the processes it started
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_the_job_agent(address: str, env: dict, timeout: float = 180) -> None:
    """The dashboard answers before its job agent registers (a job submitted then is refused:
    "No available agent to submit job"), the later the busier the machine: a trivial job,
    retried until the head runs it."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", address, "--", "true"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Ray head at {address} took no job in {timeout:g} s: {done.stderr[-500:]}")
        time.sleep(2)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    port = free_port()
    server = start_mlflow(tmp_path_factory.mktemp("mlflow"), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


def _submit(workdir: Path, address: str, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "sweeper"), "submit", "config.yaml", "--address", address, *extra],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_submit_wait_runs_the_sweep_on_the_cluster(tmp_path, ray_head, mlflow_server, token) -> None:
    address, env, _ = ray_head
    data = tiny_config_data(tmp_path, name="submitted")
    data["tracking"]["uri"] = mlflow_server
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))

    done = _submit(tmp_path, address, env, "--wait")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "submitted job" in done.stdout and "SUCCEEDED" in done.stdout
    assert "RankMe plateau" in done.stdout  # the driver's own output, streamed back

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("submitted")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 4 and len(children) == 3
    assert all(r.info.status == "FINISHED" and "rankme/embedding" in r.data.metrics for r in children)

    # The token appears nowhere we wrote or printed.
    assert token not in done.stdout + done.stderr
    for run in runs:
        assert token not in str(run.data.params) + str(run.data.tags)
    for path in (tmp_path / "sweeps").rglob("*"):
        if path.is_file() and path.suffix in {".csv", ".json", ".yaml", ".md", ".pkl"}:
            assert token.encode() not in path.read_bytes(), path


def test_submit_without_the_token_is_one_clear_error(tmp_path, ray_head) -> None:
    address, env, _ = ray_head
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config_data(tmp_path, name="denied")))
    no_token = {k: v for k, v in env.items() if k not in {"RAY_AUTH_TOKEN", "RAY_AUTH_MODE"}}
    done = _submit(tmp_path, address, no_token)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("sweeper: error: ") and "RAY_AUTH_TOKEN" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sweeps").exists()


def test_unreachable_head_is_one_clear_error(tmp_path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config_data(tmp_path, name="nohead")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    done = _submit(tmp_path, f"http://127.0.0.1:{free_port()}", env)
    assert done.returncode == 2 and "cannot reach the Ray head" in done.stderr, done.stderr


def test_an_embedded_sweep_never_joins_a_head_running_on_this_machine(ray_head) -> None:
    """A bare ``ray.init()`` joins the head the last `ray start` recorded in
    /tmp/ray/ray_current_cluster (here it would fail on the head's token); a sweep without
    --address starts a Ray of its own instead."""
    import ray

    from sweeper.sweep._cluster import connect

    _, _, head = ray_head
    recorded = Path("/tmp/ray/ray_current_cluster")  # what `ray start` writes without --temp-dir
    before = recorded.read_bytes() if recorded.exists() else None
    recorded.parent.mkdir(parents=True, exist_ok=True)
    recorded.write_text(head)
    try:
        assert connect(None) is True
        try:
            assert ray.get_runtime_context().gcs_address != head
            assert ray.cluster_resources().get("CPU", 0) >= 1
        finally:
            ray.shutdown()
    finally:
        if before is None:
            recorded.unlink(missing_ok=True)
        else:
            recorded.write_bytes(before)


FAR_PLUGIN = '''
"""A backbone plugin that records where each build imported it from."""

import os
from pathlib import Path

from torch import nn

import sweeper

LOG = Path({log!r})


class Pooled(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


@sweeper.register_backbone("far_cnn")
def far_cnn(*, in_channels: int, image_size: int) -> nn.Module:
    with LOG.open("a") as log:
        log.write(f"{{os.getpid()}} {{__file__}}\\n")
    return Pooled(in_channels)
'''


def test_the_job_ships_the_plugins_its_working_directory_lacks(tmp_path, monkeypatch) -> None:
    """Ray puts the job's working directory on its PYTHONPATH: a plugin directly in it needs no
    shipping; one beside a config in a subdirectory, or elsewhere on this machine's sys.path,
    joins py_modules, after the user's own."""
    from sweeper.config import load_config
    from sweeper.submit import DEFAULT_EXCLUDES, job_runtime_env

    work, configs, far = tmp_path / "work", tmp_path / "work" / "configs", tmp_path / "far"
    for directory in (configs, far / "submit_far_plugin"):
        directory.mkdir(parents=True)
    (work / "submit_local_plugin.py").write_text("X = 1\n")
    (configs / "submit_beside_plugin.py").write_text("X = 2\n")
    (far / "submit_far_plugin" / "__init__.py").write_text("X = 3\n")
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(far))
    data = tiny_config_data(tmp_path, name="shipping")
    data["plugins"] = ["submit_local_plugin", "submit_beside_plugin", "submit_far_plugin"]
    (configs / "sweep.yaml").write_text(yaml.safe_dump(data))
    config = load_config(configs / "sweep.yaml")

    user = {"py_modules": ["s3://bucket/deps.zip"], "env_vars": {"OMP_NUM_THREADS": "1"}}
    env = job_runtime_env(config, working_dir=work, runtime_env=user, search_dirs=[configs])

    assert env == {
        "working_dir": str(work),
        "excludes": DEFAULT_EXCLUDES,
        "env_vars": {"OMP_NUM_THREADS": "1"},
        "py_modules": [
            "s3://bucket/deps.zip",
            str(configs / "submit_beside_plugin.py"),
            str(far / "submit_far_plugin"),
        ],
    }
    assert "py_modules" not in job_runtime_env(
        config.with_overrides({"plugins": ["submit_local_plugin"]}), working_dir=work
    )


def test_a_plugin_outside_the_working_directory_reaches_the_job(tmp_path_factory, ray_head) -> None:
    """The plugin is importable where `sweeper submit` runs (PYTHONPATH), not on the cluster:
    the job's driver and its trials build the backbone from the copy the job shipped."""
    address, env, _ = ray_head
    far = tmp_path_factory.mktemp("far")
    log = far / "builds.log"
    (far / "far_plugin").mkdir()
    (far / "far_plugin" / "__init__.py").write_text(FAR_PLUGIN.format(log=str(log)))
    tmp_path = tmp_path_factory.mktemp("submitted-plugin")
    work = tmp_path / "work"
    work.mkdir()
    data = tiny_config_data(tmp_path, name="far-plugin")
    data["plugins"] = ["far_plugin"]
    data["model"]["backbone"] = "far_cnn"
    data["search"]["space"]["method.params.cov_weight"]["values"] = [0.0, 1.0]
    data["train"]["epochs"] = 1
    data["evaluation"] |= {"oracle": ["knn"], "rankme_samples": 500}
    (work / "config.yaml").write_text(yaml.safe_dump(data))

    done = _submit(work, address, {**env, "PYTHONPATH": str(far)}, "--wait")

    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "SUCCEEDED" in done.stdout
    builds = [Path(line.split(" ", 1)[1]) for line in log.read_text().splitlines()]
    assert len(builds) >= 3  # the job driver's preflight, the node's check, the two trials
    for file in builds:
        assert "runtime_resources" in file.parts and not file.is_relative_to(far), file
