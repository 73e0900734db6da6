"""Every bad input stops `sweeper run` with exit code 2 and one line naming the key and the fix,
with no traceback, no sweep directory and no MLflow store written."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import tiny_config_data

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set(data: dict, dotted: str, value: object) -> dict:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return data


def _drop(data: dict, dotted: str) -> dict:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node[part]
    node.pop(leaf)
    return data


# (case id, how to break the config, extra CLI args, what the one line must say)
CASES = [
    ("unknown key", lambda d: _set(d, "trian", {}), [], "trian: unknown key (did you mean 'train'?)"),
    (
        "misspelt nested key",
        lambda d: _set(d, "train.epoch", 3),
        [],
        "train.epoch: unknown key (did you mean 'epochs'?)",
    ),
    ("wrong type", lambda d: _set(d, "train.epochs", "ten"), [], "train.epochs: Input should be a valid integer"),
    ("negative epochs", lambda d: _set(d, "train.epochs", -1), [], "train.epochs: Input should be greater than 0"),
    ("zero lr", lambda d: _set(d, "train.lr", 0), [], "train.lr: Input should be greater than 0"),
    (
        "tolerance above 1",
        lambda d: _set(d, "selection.tolerance", 1.5),
        [],
        "selection.tolerance: Input should be less than 1",
    ),
    (
        "tolerance zero",
        lambda d: _set(d, "selection.tolerance", 0),
        [],
        "selection.tolerance: Input should be greater than 0",
    ),
    (
        "log bound not positive",
        lambda d: _set(
            _set(d, "search.algorithm", "optuna"), "search.space", {"train.lr": {"low": 0, "high": 1, "log": True}}
        ),
        [],
        "log-scale bounds must be > 0",
    ),
    (
        "empty grid",
        lambda d: _set(d, "search.space", {"method.params.cov_weight": {"values": []}}),
        [],
        "values is empty",
    ),
    (
        "grid with a range",
        lambda d: _set(d, "search.space", {"train.lr": {"low": 0.1, "high": 1}}),
        [],
        "grid algorithm needs values",
    ),
    ("unknown method", lambda d: _set(d, "method.name", "mocov9"), [], "method.name: unknown method 'mocov9'"),
    ("unknown backbone", lambda d: _set(d, "model.backbone", "vgg11"), [], "model.backbone: unknown backbone 'vgg11'"),
    (
        "unknown dataset",
        lambda d: _set(d, "data.dataset", "imagenet21k"),
        [],
        "data.dataset: unknown dataset 'imagenet21k'",
    ),
    ("unknown optimizer", lambda d: _set(d, "train.optimizer", "adam"), [], "train.optimizer: Input should be"),
    ("missing data root", lambda d: _set(d, "data.dataset", "cifar10"), [], "needs a local data root: set data.root"),
    (
        "data root does not exist",
        lambda d: _set(_set(d, "data.dataset", "stl10"), "data.root", "/no/such/stl10"),
        [],
        "'/no/such/stl10' does not exist",
    ),
    (
        "selection param not searched",
        lambda d: _set(d, "selection.param", "train.lr"),
        [],
        "'train.lr' is not searched",
    ),
    (
        "search key not of this method",
        lambda d: _set(d, "search.space", {"method.params.temperature": {"values": [0.1]}}),
        ["--set", "selection.param=method.params.temperature"],
        "method.params has no 'temperature'",
    ),
    (
        "search key does not exist",
        lambda d: _set(d, "search.space", {"train.lrr": {"values": [0.1]}}),
        ["--set", "selection.param=train.lrr"],
        "train has no 'lrr' (did you mean 'lr'?)",
    ),
    (
        "unknown hyperparameter",
        lambda d: _set(d, "method.params", {"cov": 1.0}),
        [],
        "vicreg has no hyperparameter 'cov'",
    ),
    ("bad sweep name", lambda d: _set(d, "name", "my sweep/1"), [], "not a usable sweep name"),
    ("missing name", lambda d: _drop(d, "name"), [], "name: required key is missing"),
    ("unknown objective", lambda d: _set(d, "search.objective", "accuracy"), [], "unknown objective 'accuracy'"),
    ("bad --set", lambda d: d, ["--set", "train.epochs"], "write it as dotted.key=value"),
    ("retired file store", lambda d: _set(d, "tracking.uri", "./mlruns"), [], "file store is retired"),
    (
        "unreachable tracking server",
        lambda d: _set(d, "tracking.uri", f"http://127.0.0.1:{_closed_port()}"),
        [],
        "is unreachable",
    ),
    ("unreachable Ray address", lambda d: d, ["--address", f"127.0.0.1:{_closed_port()}"], "is unreachable"),
    (
        "invalid grid value",
        lambda d: _set(d, "search.space", {"method.params.cov_weight": {"values": [1.0, -2.0]}}),
        [],
        "search.space.method.params.cov_weight: value -2.0 is invalid",
    ),
    ("resources no node has", lambda d: _set(d, "search.resources", {"cpu": 1, "gpu": 2}), [], "2 GPU per trial"),
]


def _run(tmp_path: Path, data: dict, extra: list[str]) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "sweeper.cli", "run", str(path), *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def _assert_refused(done: subprocess.CompletedProcess, expected: str, tmp_path: Path) -> None:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sweeper: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "sweeps").exists() or not any((tmp_path / "sweeps").iterdir())
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(("case", "breaks", "extra", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, case, breaks, extra, expected) -> None:
    data = breaks(tiny_config_data(tmp_path))
    _assert_refused(_run(tmp_path, data, extra), expected, tmp_path)


def test_existing_sweep_name_is_refused_without_resume(tmp_path) -> None:
    data = tiny_config_data(tmp_path)
    existing = tmp_path / "sweeps" / data["name"]
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("earlier work")
    done = _run(tmp_path, data, [])
    assert done.returncode == 2 and "already exists" in done.stderr and "--resume" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]
    assert not (tmp_path / "mlflow.db").exists()


def test_at_least_twenty_cases() -> None:
    assert len(CASES) + 1 >= 20
