"""The dashboards researchers look at, looked at: ``optuna-dashboard`` on a sweep's Optuna study
(sqlite and journal storage) through its HTTP API, and the MLflow UI of a sweep's parent run
rendered by a real headless Chromium, its report artifacts served by ``mlflow server``.

Two tiny Optuna sweeps (2 trials, 1 epoch, digits) share one MLflow sqlite store; every server
listens on loopback on a free port and is stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pandas as pd
import pytest

from sweeper.config import load_config
from sweeper.sweep import run_sweep
from tests.helpers import tiny_config_data
from tests.servers import BIN, free_port, start_mlflow, stop, wait_http

pytestmark = pytest.mark.slow
KEY = "method.params.cov_weight"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STORAGES = ("sqlite", "journal")


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, ray_local) -> dict[str, dict]:
    """Per storage kind: the sweep's directory, its ``search.storage``, what optuna-dashboard is
    given for it, and the sweep's result; all tracked in one MLflow sqlite store."""
    root = tmp_path_factory.mktemp("dashboards")
    made = {}
    with _cwd(root):  # MLflow puts a sqlite store's artifacts under ./mlruns
        for kind in STORAGES:
            storage = f"sqlite:///{root / 'optuna.db'}" if kind == "sqlite" else f"journal:{root / 'optuna.journal'}"
            data = tiny_config_data(root, name=f"optuna-{kind}")
            data["search"] = {
                "algorithm": "optuna",
                "space": {KEY: {"low": 0.01, "high": 10.0, "log": True}},
                "num_samples": 2,
                "max_concurrent": 2,
                "storage": storage,
            }
            data["train"]["epochs"] = 1
            data["evaluation"] |= {"oracle": ["knn"], "rankme_samples": 500}
            data["tracking"]["uri"] = f"sqlite:///{root / 'mlflow.db'}"
            result = run_sweep(load_config(data=data), verbose=0)
            made[kind] = {
                "name": data["name"],
                "directory": result.directory,
                "dashboard_storage": storage if kind == "sqlite" else storage.removeprefix("journal:"),
                "parent_run_id": result.parent_run_id,
                "tracking_uri": data["tracking"]["uri"],
            }
    return made


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def _get_bytes(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


@contextlib.contextmanager
def _server(command: list[str], log: Path, ready_url: str, *, timeout: float = 90) -> Iterator[None]:
    with log.open("ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_http(ready_url, timeout=timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; {command[0]} logged:\n{log.read_text(errors='replace')[-3000:]}") from None
        yield
    finally:
        stop(process)


# ------------------------------------------------------------------ optuna-dashboard


@pytest.mark.parametrize("kind", STORAGES)
def test_optuna_dashboard_shows_the_sweeps_trials(sweeps, kind, tmp_path) -> None:
    sweep = sweeps[kind]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(BIN / "optuna-dashboard"), sweep["dashboard_storage"], "--host", "127.0.0.1", "--port", str(port)]
    with _server(command, tmp_path / "dashboard.log", f"{base}/api/meta"):
        studies = _get_json(f"{base}/api/studies")["study_summaries"]
        (study,) = [s for s in studies if s["study_name"] == sweep["name"]]
        detail = _get_json(f"{base}/api/studies/{study['study_id']}")
    table = pd.read_csv(sweep["directory"] / "trials.csv")
    assert len(table) == 2 and set(table["status"]) == {"ok"}
    trials = detail["trials"]
    assert sorted(t["number"] for t in trials) == [0, 1]
    assert {t["state"] for t in trials} == {"Complete"}
    shown = sorted(
        (float(param["param_external_value"]), trial["values"][0])
        for trial in trials
        for param in trial["params"]
        if param["name"] == KEY
    )
    expected = sorted(zip(table[KEY], table["rankme/embedding_clipped"], strict=True))  # the RankMe objective
    assert len(shown) == 2
    assert [p for p, _ in shown] == pytest.approx([p for p, _ in expected], rel=1e-12)
    assert [v for _, v in shown] == pytest.approx([v for _, v in expected], rel=1e-12)
    assert detail["directions"] == ["maximize"]


# ------------------------------------------------------------------ the MLflow UI in Chromium

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _rendered_dom(chromium: str, url: str, profile: Path, *, timeout: float = 120) -> str:
    """The page's DOM after its scripts ran (Chromium's virtual time lets the UI's fetches finish)."""
    command = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--virtual-time-budget=30000",
        "--dump-dom",
        url,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its renderer and helper processes too
        process.wait(timeout=30)
    return out.decode(errors="replace")


def test_mlflow_ui_lists_the_report_and_serves_its_plots(sweeps, tmp_path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: apt-get install chromium")
    sweep = sweeps["sqlite"]
    parent = sweep["parent_run_id"]
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # the server and the UI stay on loopback
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_mlflow(tmp_path, port, backend_uri=sweep["tracking_uri"])
    try:
        client = MlflowClient(base)
        experiment = client.get_experiment_by_name(sweep["name"]).experiment_id
        listed = sorted(PurePosixPath(a.path).name for a in client.list_artifacts(parent, "report"))
        pngs = [name for name in listed if name.endswith(".png")]
        assert "report.md" in listed and {"rankme_vs_param.png", "accuracy_vs_rankme.png"} <= set(pngs)

        url = f"{base}/#/experiments/{experiment}/runs/{parent}/artifacts/report?workflowType=machine_learning"
        for attempt in range(3):  # a loaded machine can render late: look again
            dom = _rendered_dom(chromium, url, tmp_path / f"chromium-{attempt}")
            if all(name in dom for name in listed):
                break
        missing = [name for name in listed if name not in dom]
        assert not missing, f"the run page does not list {missing}; it rendered:\n{dom[-3000:]}"
        assert sweep["name"] in dom  # the parent run's name heads the page

        for name in [*pngs, "report.md"]:
            query = urllib.parse.urlencode({"path": f"report/{name}", "run_uuid": parent})
            served = _get_bytes(f"{base}/get-artifact?{query}")
            assert served == (sweep["directory"] / name).read_bytes(), name  # the sweep's own file
            if name.endswith(".png"):
                assert served.startswith(PNG_MAGIC)
    finally:
        stop(server)
