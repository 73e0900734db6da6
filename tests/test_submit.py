"""`sweeper submit --wait` against a real Ray head with token authentication and a real
`mlflow server`, both on loopback, started and stopped by this module."""

from __future__ import annotations

import os
import subprocess
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
    home = tmp_path_factory.mktemp("home")
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "HOME": str(home),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the job's `python` is this one
    }
    dashboard = free_port()
    start = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={free_port()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--disable-usage-stats",
    ]
    subprocess.run(start, env=env, check=True, timeout=180, capture_output=True)
    try:
        wait_http(f"http://127.0.0.1:{dashboard}/api/version", timeout=120)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, timeout=120, capture_output=True)


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
    address, env = ray_head
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
    address, env = ray_head
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
