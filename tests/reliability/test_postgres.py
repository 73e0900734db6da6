"""Concurrency on PostgreSQL: 8 trials at once, every epoch logged to an `mlflow server` backed
by PostgreSQL, and the Optuna study in PostgreSQL too — no metric point lost or duplicated, no
duplicate Optuna trial.

PostgreSQL is Debian's package (``initdb``/``pg_ctl``), started by the test on loopback in a
temporary directory; as root it runs as the ``postgres`` user (initdb refuses root). The test is
skipped only when the PostgreSQL binaries are absent (``.ci/run`` installs them).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweeper.config import load_config
from sweeper.sweep import run_sweep
from sweeper.tracking import STATUS_TAG
from tests.helpers import tiny_config_data
from tests.servers import free_port, start_mlflow, stop, wait_mlflow

pytestmark = pytest.mark.slow
TRIALS = 8
EPOCHS = 3
KEY = "method.params.cov_weight"
PER_EPOCH = ("train/loss", "time/epoch_s", "rankme/embedding", "rankme/embedding_clipped", "rankme/representation")


def _postgres_bin() -> Path | None:
    """The directory of Debian's PostgreSQL server binaries (on PATH or the newest installed)."""
    candidates = [shutil.which("initdb"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)]
    for initdb in filter(None, candidates):
        directory = Path(initdb).resolve().parent
        if (directory / "pg_ctl").is_file() and (directory / "postgres").is_file():
            return directory
    return None


def _server_user() -> str | None:
    """Who runs the server: ourselves, or (initdb refuses root) ``postgres`` or ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.fail("running as root and neither a postgres nor a nobody user exists to run PostgreSQL")


@contextmanager
def _postgres(databases: tuple[str, ...]) -> Iterator[str]:
    """A throw-away PostgreSQL on 127.0.0.1 (trust auth, superuser ``sweeper``) holding
    ``databases``; yields ``postgresql://sweeper@127.0.0.1:<port>`` and removes everything after."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    import psycopg  # SQLAlchemy 2.1's driver for postgresql:// (MLflow's and Optuna's stores)

    user = _server_user()
    root = Path(tempfile.mkdtemp(prefix="sweeper-pg-"))  # short: the unix socket lives here
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    data, port = root / "data", free_port()

    def run(*args: str) -> None:
        done = subprocess.run(args, user=user, capture_output=True, text=True, timeout=90, cwd=root)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])

    options = f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "sweeper", "--auth=trust", "-E", "UTF8", "--no-sync")
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60",
            "-o", options, "start")  # fmt: skip
        try:
            with psycopg.connect(host="127.0.0.1", port=port, user="sweeper", dbname="postgres", autocommit=True) as db:
                for name in databases:
                    db.execute(f"CREATE DATABASE {name}")
            yield f"postgresql://sweeper@127.0.0.1:{port}"
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(400)
def test_eight_concurrent_trials_on_postgres(tmp_path: Path) -> None:
    import optuna
    import ray

    with _postgres(("mlflow", "optuna")) as postgres:
        port, root = free_port(), tmp_path / "server"
        root.mkdir()
        # MLflow migrates its PostgreSQL schema while Ray starts (2 CPUs, as in tests/conftest.py).
        server = start_mlflow(root, port, backend_uri=f"{postgres}/mlflow", wait=False)
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
            wait_mlflow(server, root, port)
            data = tiny_config_data(tmp_path, name="pg-concurrent")
            data["search"] = {
                "algorithm": "optuna",
                "space": {KEY: {"low": 0.1, "high": 10.0, "log": True}},
                "num_samples": TRIALS,
                "max_concurrent": TRIALS,
                "resources": {"cpu": 0.25},  # 8 trials fit in 2 CPUs
                "storage": f"{postgres}/optuna",
            }
            data["train"]["epochs"] = EPOCHS
            data["evaluation"] |= {"oracle": [], "rankme_samples": 500}  # label-free only: fast
            data["tracking"]["uri"] = f"http://127.0.0.1:{port}"
            result = run_sweep(load_config(data=data), verbose=0)
            table = result.table.set_index("trial_id")
            assert len(table) == TRIALS and set(table["status"]) == {"ok"}
            assert set(table["epochs_done"]) == {EPOCHS}

            client = MlflowClient(f"http://127.0.0.1:{port}")
            experiment = client.get_experiment_by_name("pg-concurrent")
            runs = client.search_runs([experiment.experiment_id])
            children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
            assert len(runs) == 1 + TRIALS and len(children) == TRIALS
            assert {r.data.tags["mlflow.parentRunId"] for r in children} == {result.parent_run_id}
            assert sorted(r.data.tags["sweeper.trial_id"] for r in children) == sorted(table.index)
            landed = 0
            for child in children:
                assert child.info.status == "FINISHED" and child.data.tags[STATUS_TAG] == "ok"
                for key in PER_EPOCH:
                    steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, key))
                    assert steps == list(range(1, EPOCHS + 1)), (child.data.tags["sweeper.trial_id"], key, steps)
                    landed += len(steps)
            assert landed == TRIALS * len(PER_EPOCH) * EPOCHS

            study = optuna.load_study(study_name="pg-concurrent", storage=f"{postgres}/optuna")
            trials = study.get_trials(deepcopy=False)
            assert len(trials) == TRIALS
            assert sorted(t.number for t in trials) == list(range(TRIALS))
            assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
            from_study = sorted((t.params[KEY], t.value) for t in trials)
            from_csv = sorted(zip(table[KEY], table["rankme/embedding_clipped"], strict=True))
            assert len({param for param, _ in from_study}) == TRIALS  # no trial twice
            assert [p for p, _ in from_study] == pytest.approx([p for p, _ in from_csv], rel=1e-12)
            assert [v for _, v in from_study] == pytest.approx([v for _, v in from_csv], rel=1e-12)
        finally:
            ray.shutdown()
            stop(server)
