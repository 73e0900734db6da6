"""`sweeper submit --wait` against a real Ray head with token authentication and a real
`mlflow server`, both on loopback, started and stopped by this module."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
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
        "--include-dashboard=true",
        "--disable-usage-stats",
    ]
    with (home / "ray-start.log").open("ab") as log:
        head = subprocess.Popen(start, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{dashboard}/api/version", timeout=180)
        yield f"http://127.0.0.1:{dashboard}", env, f"127.0.0.1:{gcs}"
    finally:
        stop(head)  # SIGTERM to its session: `ray start --block` stops the processes it started
        shutil.rmtree(temp_dir, ignore_errors=True)


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
