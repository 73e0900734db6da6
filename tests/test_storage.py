"""Sweeps in a pyarrow filesystem: ``storage_path: s3://...`` against an S3-compatible server
(moto) on loopback — trials, checkpoints, sweeper.yaml, trials.csv and the report land in the
bucket; status, resume and growth read them from there; nothing is kept locally but the report's
copy. Plus :class:`sweeper.storage.SweepLocation` on a local directory."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from sweeper.cli import main
from sweeper.config import load_config
from sweeper.storage import SweepLocation
from sweeper.sweep import SweepError, load_sweep_config, preflight, run_sweep, sweep_location, trial_table
from tests.helpers import tiny_config_data
from tests.servers import free_port, start_s3, stop

BUCKET = "team-sweeps"


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> str:
    """An S3 server with an empty bucket; returns the endpoint host:port."""
    root = tmp_path_factory.mktemp("s3")
    port = free_port()
    server = start_s3(root, port)
    endpoint = f"127.0.0.1:{port}"
    try:
        filesystem = pafs.S3FileSystem(
            endpoint_override=endpoint,
            scheme="http",
            access_key="test",
            secret_key="test",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        filesystem.create_dir(BUCKET)
        yield endpoint
    finally:
        stop(server)


@pytest.fixture
def s3_env(monkeypatch, tmp_path) -> None:
    """Credentials in the environment (the embedded Ray's workers inherit them), and the report
    copies under tmp_path."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))


def _storage(endpoint: str, bucket: str = BUCKET) -> str:
    return f"s3://{bucket}/runs?endpoint_override={endpoint}&scheme=http&region=us-east-1"


def _objects(location: SweepLocation) -> set[str]:
    selector = pafs.FileSelector(location.path, recursive=True)
    prefix = location.path + "/"
    return {
        info.path.removeprefix(prefix)
        for info in location.filesystem.get_file_info(selector)
        if info.type == pafs.FileType.File
    }


@pytest.mark.usefixtures("s3_env")
def test_sweep_runs_resumes_and_grows_in_s3(s3, tmp_path, capsys) -> None:
    data = tiny_config_data(tmp_path, name="in-s3", storage_path=_storage(s3))
    data["search"]["space"] = {"method.params.cov_weight": {"values": [1.0, 8.0]}}
    config = load_config(data=data)

    result = run_sweep(config, verbose=0)
    assert list(result.table["status"]) == ["ok", "ok"]
    location = sweep_location(config)
    assert location.uri.startswith(f"s3://{BUCKET}/runs/in-s3?endpoint_override=")
    objects = _objects(location)
    for name in ("sweeper.yaml", "trials.csv", "report.md", "report.json", "rankme_vs_param.png"):
        assert name in objects, name
    assert any(name.startswith("experiment_state") for name in objects)
    trials = {name.split("/")[0] for name in objects if name.startswith("train_trial_")}
    assert len(trials) == 2
    for trial in trials:  # checkpoints went to the bucket through Tune's pyarrow filesystem
        assert any(name.startswith(f"{trial}/checkpoint_") and name.endswith("trainer.pt") for name in objects)
    assert not (tmp_path / "sweeps").exists() and not Path("s3:").exists()
    assert (tmp_path / "cache").is_dir() and (result.directory / "report.md").is_file()  # the local copy
    rows_before = _result_rows(location)

    # A second start of the same name is refused before anything is written.
    with pytest.raises(SweepError, match=r"already exists at s3://team-sweeps/runs/in-s3"):
        preflight(config)

    # status by name under the URI, from the bucket.
    assert main(["status", "in-s3", "--storage-path", _storage(s3)]) == 0
    assert "2 ok" in capsys.readouterr().out

    # resume by name with a larger budget: a grid gains a repeat with new seeds; the first two
    # trials are not retrained.
    saved = load_sweep_config("in-s3", storage_path=_storage(s3))
    assert saved.storage_path == _storage(s3) and saved.name == "in-s3"
    grown = saved.with_overrides({"search.num_samples": 2})
    second = run_sweep(grown, resume=True, verbose=0)
    assert len(second.table) == 4 and set(second.table["status"]) == {"ok"}
    assert sorted(second.table["seed"].dropna()) == [1, 1]  # the added repeat; the first had seed 0
    rows_after = _result_rows(location)
    assert {trial: rows_after[trial] for trial in rows_before} == rows_before
    assert load_sweep_config(location.uri).search.num_samples == 2
    csv = location.read_bytes("trials.csv").decode()
    assert len(csv.strip().splitlines()) == 1 + 4
    assert len(trial_table(location, grown)) == 4


def _result_rows(location: SweepLocation) -> dict[str, list[tuple[int, float]]]:
    rows = {}
    for name in sorted(_objects(location)):
        if name.startswith("train_trial_") and name.endswith("/result.json"):
            lines = [json.loads(line) for line in location.read_bytes(name).decode().splitlines() if line.strip()]
            rows[lines[0]["trial_id"]] = [(row["epoch"], row["train/loss"]) for row in lines]
    return rows


@pytest.mark.usefixtures("s3_env")
def test_missing_bucket_is_refused_before_anything_is_written(s3, tmp_path) -> None:
    config = load_config(data=tiny_config_data(tmp_path, storage_path=_storage(s3, "no-such-bucket")))
    with pytest.raises(SweepError, match=r"bucket 'no-such-bucket' does not exist: create it, or fix storage_path"):
        run_sweep(config, verbose=0)
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.usefixtures("s3_env")
def test_unreachable_storage_is_refused_before_anything_is_written(tmp_path) -> None:
    closed = f"127.0.0.1:{free_port()}"
    config = load_config(data=tiny_config_data(tmp_path, storage_path=_storage(closed)))
    with pytest.raises(SweepError, match=r"cannot reach storage 's3://team-sweeps/runs/tiny\?endpoint_override="):
        run_sweep(config, verbose=0)
    assert not (tmp_path / "mlflow.db").exists()


def test_local_location_reads_writes_and_names_children(tmp_path) -> None:
    root = SweepLocation.of(tmp_path / "sweeps")
    assert root.is_local and root.uri == str(tmp_path / "sweeps") and not root.exists()
    sweep = root.child("a")
    sweep.write_bytes("x.json", b"{}")
    sweep.write_bytes("x.json", b'{"v": 1}')
    assert sweep.read_bytes("x.json") == b'{"v": 1}' and sweep.is_file("x.json")
    assert sweep.glob("*.json") == ["x.json"] and sweep.glob("*.csv") == []
    assert sorted(p.name for p in (tmp_path / "sweeps" / "a").iterdir()) == ["x.json"]  # no temporary left
    assert sweep.parent_uri() == str(tmp_path / "sweeps") and sweep.name == "a"
    assert sweep.local_path == tmp_path / "sweeps" / "a"


def test_uri_location_keeps_its_query_for_children(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path))
    location = SweepLocation.of("s3://bkt/runs?endpoint_override=127.0.0.1:1&scheme=http&region=us-east-1")
    child = location.child("sweep")
    assert child.path == "bkt/runs/sweep"
    assert child.uri == "s3://bkt/runs/sweep?endpoint_override=127.0.0.1:1&scheme=http&region=us-east-1"
    assert child.parent_uri() == location.uri
    assert child.local_path == tmp_path / "storage" / "s3" / "bkt" / "runs" / "sweep"
