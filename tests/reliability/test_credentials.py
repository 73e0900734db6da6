"""Credentials come from the environment and never land in logged params, artifacts, tags,
trials.csv or the report; any URI of the config that embeds them is refused (without echoing
them; tests/reliability/test_config_input.py covers the spellings through the CLI)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from sweeper.config import ConfigError, load_config
from sweeper.sweep import run_sweep
from tests.helpers import tiny_config_data

pytestmark = pytest.mark.usefixtures("ray_local")
SECRETS = {
    "MLFLOW_TRACKING_TOKEN": "mlflow-token-7f3a9c",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-1b2c3d",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE42",
    "PGPASSWORD": "db-pass-9e8d7c",
}


def test_no_secret_lands_in_anything_the_sweep_records(tmp_path, monkeypatch) -> None:
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    data = tiny_config_data(tmp_path, name="secrets")
    data["search"]["space"] = {"method.params.cov_weight": {"values": [0.0, 1.0]}}
    data["search"]["storage"] = "postgresql://sweeper@127.0.0.1:5432/optuna"  # unused by grid; PGPASSWORD
    config = load_config(data=data)
    result = run_sweep(config, verbose=0)

    needles = list(SECRETS.values())
    client = MlflowClient(config.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
    assert len(runs) == 3
    for run in runs:
        recorded = str(run.data.params) + str(run.data.tags) + str(run.data.metrics)
        assert not any(needle in recorded for needle in needles)
    assert (
        client.get_run(result.parent_run_id).data.params["search.storage"] == "postgresql://***@127.0.0.1:5432/optuna"
    )
    artifacts = tmp_path / "artifacts"
    client.download_artifacts(result.parent_run_id, "", str(artifacts.mkdir() or artifacts))
    files = [p for p in artifacts.rglob("*") if p.is_file()]
    files += [p for p in result.directory.glob("*") if p.is_file() and p.name != "sweeper.yaml"]
    assert any(p.name == "config.json" for p in files) and any(p.name == "trials.csv" for p in files)
    for path in files:
        content = path.read_bytes()
        assert not any(needle.encode() in content for needle in needles), path


@pytest.mark.parametrize(
    ("key", "uri", "env"),
    [
        ("tracking.uri", "https://alice:hunter2@mlflow.example.org", "MLFLOW_TRACKING_PASSWORD"),
        ("tracking.uri", "HTTPS://alice:hun/ter2@mlflow.example.org", "MLFLOW_TRACKING_PASSWORD"),
        ("search.storage", "postgresql://sweeper:hunter2@127.0.0.1:5432/optuna", "PGPASSWORD"),
        ("storage_path", "s3://AKIA:hunter2@bucket/sweeps", "AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_credentials_in_a_uri_are_refused(tmp_path, key: str, uri: str, env: str) -> None:
    data = tiny_config_data(tmp_path)
    section, _, leaf = key.rpartition(".")
    (data[section] if section else data)[leaf] = uri
    with pytest.raises(ConfigError, match=rf"^{key}: .*credentials do not belong in the URI.*{env}") as info:
        load_config(data=data)
    assert "hunter2" not in str(info.value) and "alice" not in str(info.value)
