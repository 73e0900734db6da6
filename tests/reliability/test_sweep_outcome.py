"""How a sweep ends tells what happened: a sweep in which no trial finished ``ok`` exits 1 and
says what failed (the first trial's error line); a Ctrl-C exits 130 with the parent run and the
stopped child runs marked KILLED (never FINISHED), no report printed as if the sweep had
finished, the sweep's claim released, and the command that resumes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeper.cli import main
from sweeper.sweep._claim import CLAIM_FILE
from tests.helpers import tiny_config_data

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _runs(tmp_path: Path) -> tuple[list, list]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    return parents, [run for run in runs if "mlflow.parentRunId" in run.data.tags]


def test_a_sweep_in_which_no_trial_finished_ok_exits_non_zero(tmp_path, monkeypatch, capsys) -> None:
    # Undecodable images: the root has the shape an ImageFolder needs (the preflight passes), and
    # every trial fails when it decodes them.
    for split in ("train", "val"):
        for label in ("a", "b"):
            (tmp_path / "images" / split / label).mkdir(parents=True)
            (tmp_path / "images" / split / label / "1.png").write_bytes(b"not a PNG at all")
    data = tiny_config_data(tmp_path)
    data["data"] = {"dataset": "imagefolder", "root": str(tmp_path / "images"), "image_size": 8, "in_memory": True}
    data["train"]["epochs"] = 1
    data["evaluation"]["oracle"] = []
    data["search"]["space"] = {"method.params.cov_weight": {"values": [0.0, 1.0]}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    code = main(["run", "config.yaml", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1, captured.err[-3000:]
    last = [line for line in captured.err.splitlines() if line.strip()][-1]
    assert last.startswith("sweeper: error: no trial of sweep 'tiny' finished ok (2 failed); the first error, trial ")
    assert "UnidentifiedImageError: cannot identify image file" in last, last
    assert "2 failed" in captured.out  # the report of what ran is still printed
    parents, children = _runs(tmp_path)
    assert [run.info.status for run in parents] == ["FINISHED"]
    assert sorted(run.info.status for run in children) == ["FAILED", "FAILED"]


def test_ctrl_c_marks_the_runs_killed_exits_130_and_says_how_to_resume(tmp_path) -> None:
    data = tiny_config_data(tmp_path)
    data["train"]["epochs"] = 200  # far longer than the test waits
    data["evaluation"] |= {"oracle": [], "every_n_epochs": 1}
    data["search"] |= {"space": {"method.params.cov_weight": {"values": [0.0, 1.0, 8.0]}}, "max_concurrent": 1}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen(
        [sys.executable, "-m", "sweeper.cli", "run", "config.yaml", "--quiet"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sweep = tmp_path / "sweeps" / "tiny"
    deadline = time.monotonic() + 300
    while not any(path.stat().st_size for path in sweep.glob("train_trial_*/result.json")):  # an epoch reported
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
        time.sleep(1)
    driver.send_signal(signal.SIGINT)  # one Ctrl-C
    out, err = driver.communicate(timeout=180)
    assert driver.returncode == 130, err[-3000:]
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last == f"sweeper: interrupted: resume with `sweeper resume {sweep}`"
    assert "Headline pick" not in out and not (sweep / "trials.csv").exists()  # not reported as finished
    assert not (sweep / CLAIM_FILE).exists()  # the resume it names may claim the sweep
    parents, children = _runs(tmp_path)
    assert [run.info.status for run in parents] == ["KILLED"]
    assert children and {run.info.status for run in children} == {"KILLED"}
