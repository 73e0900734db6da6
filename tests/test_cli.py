"""The command line: clear one-line errors before anything is written; a real run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers import tiny_config_data

REPO = Path(__file__).resolve().parents[1]


def sweeper(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "sweeper.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


BAD_CONFIGS = {
    "unknown key": ({"trian": {"epochs": 1}}, "trian: unknown key (did you mean 'train'?)"),
    "wrong type": ({"train": {"epochs": "ten"}}, "train.epochs: Input should be a valid integer"),
    "unknown method": ({"method": {"name": "mocov9"}}, "method.name: unknown method 'mocov9'"),
    "missing root": (
        {"data": {"dataset": "cifar10", "root": "/no/data/here"}},
        "'/no/data/here' does not exist",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_malformed_config_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, case: str) -> None:
    data = tiny_config_data(tmp_path)
    change, expected = BAD_CONFIGS[case]
    for section, value in change.items():
        data[section] = {**data[section], **value} if isinstance(data.get(section), dict) else value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    done = sweeper("run", str(path), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweeper: error: ") and expected in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "sweeps").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_override_error_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config_data(tmp_path)))
    done = sweeper("run", str(path), "--set", "train.epochs=-3", cwd=tmp_path)
    assert done.returncode == 2 and "train.epochs" in done.stderr


def test_rankme_command_on_a_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((400, 5)) @ rng.standard_normal((5, 32))  # rank 5
    np.save(tmp_path / "z.npy", z.astype(np.float32))
    done = sweeper("rankme", str(tmp_path / "z.npy"), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    import json

    values = json.loads(done.stdout)
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum() + 1e-7
    assert values["rankme"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-5)
    assert values["classical_rank"] == 5


def test_check_prints_the_built_in_components_and_refuses_an_unreachable_cluster(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config_data(tmp_path)))
    done = sweeper("check", str(path), "--set", "model.backbone=resnet18", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" (")[0].split() for line in lines[:3]] == [
        ["method", "vicreg"],
        ["backbone", "resnet18"],
        ["dataset", "digits"],
    ]
    assert lines[0].endswith("sweeper/methods/vicreg.py: hyperparameters inv_weight, var_weight, cov_weight")
    assert lines[1].endswith(": width 512 (measured on 2 dummy 1-channel 8 px images)")
    assert lines[3] == f"{path}: 3 component(s) import and fit here" and len(lines) == 4

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    done = sweeper("check", str(path), "--address", f"127.0.0.1:{closed}", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"sweeper: error: Ray address '127.0.0.1:{closed}' is unreachable (Connection refused): start the cluster, "
        "or fix --address / RAY_ADDRESS (omit both for an embedded local Ray)"
    ]
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.slow
def test_quickstart_cli_end_to_end(tmp_path: Path) -> None:
    """The README's main job, shortened: the CLI runs a sweep and prints the selection table."""
    done = sweeper(
        "run",
        str(REPO / "configs" / "quickstart.yaml"),
        "--set",
        "train.epochs=2",
        "--set",
        "data.image_size=8",
        "--set",
        "evaluation.linear_epochs=10",
        "--set",
        f"storage_path={tmp_path / 'sweeps'}",
        "--quiet",
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RankMe plateau" in done.stdout and "oracle" in done.stdout
    assert (tmp_path / "mlflow.db").exists()
    assert (tmp_path / "sweeps" / "quickstart-vicreg-cov" / "trials.csv").exists()
