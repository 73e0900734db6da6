"""One driver per sweep: the exclusive claim a driver takes before it writes anything.

Two ``sweeper run`` of one config started together: exactly one runs, the other exits 2 with the
usual "already exists" line, and the sweep holds one Tune experiment, one MLflow parent with its
two children and a complete ``trials.csv``. A resume takes the claim too (refused while a live
driver holds it); a dead driver's claim lapses (its pid gone on this host, or its heartbeat
older than the bound on any host). On an object store (a moto S3 server), of claimants racing
for a new sweep exactly one wins.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeper.errors import SweepError
from sweeper.storage import SweepLocation
from sweeper.sweep import _claim
from sweeper.sweep._claim import CLAIM_FILE, STALE_AFTER_S, claim_sweep
from tests.servers import free_port, start_s3, stop

REPO = Path(__file__).resolve().parents[2]
BASE = {  # the repro: two 1-epoch trials, one at a time
    "name": "tiny",
    "storage_path": "./sweeps",
    "seed": 0,
    "data": {"dataset": "digits", "image_size": 16},
    "method": {"name": "vicreg", "params": {"inv_weight": 25.0, "var_weight": 25.0, "cov_weight": 1.0}},
    "model": {"backbone": "small_cnn", "projector": [64, 32]},
    "train": {"epochs": 1, "batch_size": 128, "warmup_epochs": 0},
    "evaluation": {"every_n_epochs": 1, "rankme_samples": 512, "oracle": []},
    "search": {
        "algorithm": "grid",
        "space": {"method.params.cov_weight": {"values": [0.0, 1.0]}},
        "max_concurrent": 1,
        "resources": {"cpu": 1, "gpu": 0},
    },
    "tracking": {"uri": "sqlite:///mlflow.db"},
}


def _dead_pid() -> int:
    done = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    pid = int(done.stdout)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    return pid


def _write_marker(directory: Path, *, host: str, pid: int, age_s: float = 0.0) -> None:
    marker = directory / CLAIM_FILE
    marker.write_text(json.dumps({"host": host, "pid": pid, "since": "earlier", "token": "other"}))
    then = time.time() - age_s
    os.utime(marker, (then, then))


def test_a_new_sweep_is_claimed_once_and_released(tmp_path: Path) -> None:
    location = SweepLocation.of(tmp_path / "store" / "sweeps" / "tiny")
    claim = claim_sweep(location, name="tiny", resume=False)
    holder = json.loads((tmp_path / "store/sweeps/tiny" / CLAIM_FILE).read_text())
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
    with pytest.raises(
        SweepError, match=r"sweep 'tiny' already exists at .*store/sweeps/tiny: resume it with --resume"
    ):
        claim_sweep(location, name="tiny", resume=False)
    with pytest.raises(SweepError, match=rf"{CLAIM_FILE}: sweep 'tiny' is being run by pid {os.getpid()} on "):
        claim_sweep(location, name="tiny", resume=True)  # a resume while this driver runs
    claim.release()
    # Nothing else was written: the directories the claim made are gone with it.
    assert not (tmp_path / "store").exists()


def test_a_released_claim_keeps_the_sweep_and_lets_a_resume_in(tmp_path: Path) -> None:
    location = SweepLocation.of(tmp_path / "sweeps" / "tiny")
    claim = claim_sweep(location, name="tiny", resume=False)
    (tmp_path / "sweeps" / "tiny" / "tuner.pkl").write_bytes(b"the sweep's work")
    claim.release()
    assert sorted(p.name for p in (tmp_path / "sweeps" / "tiny").iterdir()) == ["tuner.pkl"]
    again = claim_sweep(location, name="tiny", resume=True)
    again.release()
    assert sorted(p.name for p in (tmp_path / "sweeps" / "tiny").iterdir()) == ["tuner.pkl"]


def test_a_dead_or_silent_driver_does_not_block_a_resume(tmp_path: Path) -> None:
    directory = tmp_path / "sweeps" / "tiny"
    directory.mkdir(parents=True)
    location = SweepLocation.of(directory)
    # A driver on this host whose process is gone: taken over at once.
    _write_marker(directory, host=socket.gethostname(), pid=_dead_pid())
    claim_sweep(location, name="tiny", resume=True).release()
    # A driver on another host with a fresh heartbeat: refused, naming it and the bound.
    _write_marker(directory, host="node-7", pid=4242, age_s=10)
    with pytest.raises(SweepError, match=rf"being run by pid 4242 on node-7 .* {STALE_AFTER_S:g} s after its last"):
        claim_sweep(location, name="tiny", resume=True)
    # ... whose heartbeat stopped longer ago than the bound: taken over.
    _write_marker(directory, host="node-7", pid=4242, age_s=STALE_AFTER_S + 60)
    claim = claim_sweep(location, name="tiny", resume=True)
    assert json.loads((directory / CLAIM_FILE).read_text())["token"] == claim.holder["token"]
    claim.release()
    assert not (directory / CLAIM_FILE).exists()


def test_a_requeued_driver_waits_for_a_dead_drivers_claim_to_lapse(tmp_path: Path, monkeypatch) -> None:
    """``sweeper run --resume-if-exists`` (a Slurm requeue) waits instead of failing: the
    previous driver died on another node moments ago and its heartbeat has not lapsed yet."""
    monkeypatch.setattr(_claim, "HEARTBEAT_S", 0.2)
    directory = tmp_path / "sweeps" / "tiny"
    directory.mkdir(parents=True)
    _write_marker(directory, host="node-7", pid=4242, age_s=STALE_AFTER_S - 1.5)
    started = time.monotonic()
    claim = claim_sweep(SweepLocation.of(directory), name="tiny", resume=True, wait_s=30)
    assert 1.0 < time.monotonic() - started < 10
    claim.release()
    _write_marker(directory, host="node-7", pid=4242)  # alive: the wait ends in a refusal
    with pytest.raises(_claim.ClaimHeld, match="being run by pid 4242 on node-7"):
        claim_sweep(SweepLocation.of(directory), name="tiny", resume=True, wait_s=1)


def test_a_live_driver_on_this_host_blocks_a_resume_until_it_exits(tmp_path: Path) -> None:
    directory = tmp_path / "sweeps" / "tiny"
    directory.mkdir(parents=True)
    driver = subprocess.Popen(["sleep", "60"])
    try:
        _write_marker(directory, host=socket.gethostname(), pid=driver.pid)
        with pytest.raises(SweepError, match=rf"being run by pid {driver.pid} on "):
            claim_sweep(SweepLocation.of(directory), name="tiny", resume=True)
    finally:
        driver.kill()
        driver.wait()
    claim_sweep(SweepLocation.of(directory), name="tiny", resume=True).release()


def test_a_resume_of_no_sweep_claims_nothing(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match="no resumable sweep at .*: start it without --resume"):
        claim_sweep(SweepLocation.of(tmp_path / "sweeps" / "tiny"), name="tiny", resume=True)
    assert not (tmp_path / "sweeps").exists()


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A moto S3 server with an empty bucket; returns a storage_path in it."""
    root = tmp_path_factory.mktemp("s3")
    port = free_port()
    server = start_s3(root, port)
    try:
        filesystem = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            access_key="test",
            secret_key="test",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        filesystem.create_dir("claims")
        yield f"s3://claims/sweeps?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    finally:
        stop(server)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(_claim, "SETTLE_S", 1.0)


@pytest.mark.usefixtures("s3_env")
def test_on_an_object_store_exactly_one_of_racing_claimants_wins(bucket: str) -> None:
    location = SweepLocation.of(bucket).child("race")
    start = threading.Barrier(4)
    won: list[object] = []
    refused: list[str] = []

    def claimant() -> None:
        start.wait()
        try:
            won.append(claim_sweep(location, name="race", resume=False))
        except SweepError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=claimant) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(refused) == 3, refused
    assert all("sweep 'race'" in message for message in refused)
    won[0].release()
    assert not location.exists(CLAIM_FILE)


@pytest.mark.usefixtures("s3_env")
def test_on_an_object_store_a_silent_drivers_claim_lapses(bucket: str) -> None:
    location = SweepLocation.of(bucket).child("silent")
    holder = {"host": "node-7", "pid": 4242, "since": "earlier", "token": "other", "heartbeat": time.time()}
    location.write_bytes(CLAIM_FILE, json.dumps(holder).encode())
    with pytest.raises(SweepError, match="being run by pid 4242 on node-7"):
        claim_sweep(location, name="silent", resume=True)
    holder["heartbeat"] = time.time() - STALE_AFTER_S - 60
    location.write_bytes(CLAIM_FILE, json.dumps(holder).encode())
    claim = claim_sweep(location, name="silent", resume=True)
    claim.release()
    assert not location.exists(CLAIM_FILE)


def _mlflow_runs(directory: Path) -> list:
    client = MlflowClient(f"sqlite:///{directory / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    return client.search_runs([experiment.experiment_id])


@pytest.mark.slow
def test_two_runs_of_one_sweep_started_together_run_it_once(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(BASE))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    # Each driver its own embedded Ray, in a short path (Ray's socket paths must fit 107 bytes).
    ray_dirs = [tempfile.mkdtemp(prefix="ray-", dir="/tmp") for _ in range(2)]
    command = [sys.executable, "-m", "sweeper.cli", "run", "config.yaml", "--quiet"]
    try:
        drivers = [
            subprocess.Popen(
                command,
                cwd=tmp_path,
                env={**env, "RAY_TMPDIR": ray_dir},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for ray_dir in ray_dirs
        ]
        outcomes = []
        for driver in drivers:
            out, err = driver.communicate(timeout=600)
            outcomes.append((driver.returncode, out, err))
    finally:
        for ray_dir in ray_dirs:
            shutil.rmtree(ray_dir, ignore_errors=True)
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 2], [err[-3000:] for _, _, err in outcomes]
    _, _, loser = next(outcome for outcome in outcomes if outcome[0] == 2)
    lines = [line for line in loser.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in loser, loser
    assert lines[0].startswith("sweeper: error: sweep 'tiny' already exists at ") and "--resume" in lines[0]

    sweep = tmp_path / "sweeps" / "tiny"
    assert len(list(sweep.glob("experiment_state-*.json"))) == 1
    assert len(list(sweep.glob("train_trial_*"))) == 2
    assert len((sweep / "trials.csv").read_text().strip().splitlines()) == 1 + 2
    assert not (sweep / CLAIM_FILE).exists()
    runs = _mlflow_runs(tmp_path)
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and {run.data.tags["mlflow.parentRunId"] for run in children} == {parents[0].info.run_id}
