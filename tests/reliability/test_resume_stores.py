"""A sweep saved by an older sweeper, whose ``sweeper.yaml`` holds relative stores
(``tracking.uri: sqlite:///mlflow.db``, ``storage_path: ./sweeps``), resumed from another
directory: the stores resolve against the directory the sweep was started from (found from its
relative storage_path and where the sweep is), never against the current directory, which would
split the sweep's MLflow records; when that directory cannot be told, or holds no such store,
the resume is refused naming both readings. (New sweeps save absolute stores:
``tests/test_config.py``.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sweeper.errors import SweepError
from sweeper.sweep import load_sweep_config
from tests.helpers import tiny_config_data


def _old_sweep(origin: Path, *, storage_path: str, optuna_db: bool = False) -> Path:
    """``origin/<storage_path>/tiny/sweeper.yaml`` as an older sweeper saved it (relative)."""
    data = tiny_config_data(origin)
    data["storage_path"] = storage_path
    data["tracking"]["uri"] = "sqlite:///mlflow.db"
    if optuna_db:
        data["search"] |= {
            "algorithm": "optuna",
            "space": {"method.params.cov_weight": {"low": 0.0, "high": 8.0}},
            "storage": "sqlite:///optuna.db",
        }
    directory = (origin / storage_path / "tiny").resolve()
    directory.mkdir(parents=True)
    (directory / "sweeper.yaml").write_text(yaml.safe_dump(data))
    return directory


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    (directory / "mlflow.db").write_bytes(b"")  # a store here must not be taken for the sweep's
    monkeypatch.chdir(directory)
    return directory


@pytest.mark.parametrize("storage_path", ["./sweeps", "sweeps", "runs/sweeps", "."])
def test_relative_stores_resolve_against_the_start_directory(tmp_path, elsewhere, storage_path: str) -> None:
    origin = tmp_path / "project"
    sweep = _old_sweep(origin, storage_path=storage_path, optuna_db=True)
    (origin / "mlflow.db").write_bytes(b"")
    (origin / "optuna.db").write_bytes(b"")
    config = load_sweep_config(sweep)
    assert config.tracking.uri == f"sqlite:///{origin / 'mlflow.db'}"
    assert config.search.storage == f"sqlite:///{origin / 'optuna.db'}"
    assert Path(config.storage_path) == sweep.parent


def test_a_start_directory_without_the_store_is_refused_naming_both(tmp_path, elsewhere) -> None:
    origin = tmp_path / "project"
    sweep = _old_sweep(origin, storage_path="./sweeps")  # the sweep moved, or its store did
    with pytest.raises(SweepError) as refused:
        load_sweep_config(sweep)
    message = str(refused.value)
    assert message.startswith(f"{sweep / 'sweeper.yaml'}: tracking.uri 'sqlite:///mlflow.db' is relative")
    assert f"{origin / 'mlflow.db'} (where the sweep was started) does not exist" in message
    assert f"{elsewhere / 'mlflow.db'} (relative to this directory)" in message


@pytest.mark.parametrize("storage_path", ["/abs", "../up/sweeps"])
def test_an_unknown_start_directory_is_refused(tmp_path, elsewhere, storage_path: str) -> None:
    saved = str(tmp_path / "abs") if storage_path == "/abs" else storage_path
    sweep = _old_sweep(tmp_path / "project" / "a", storage_path=saved)
    with pytest.raises(SweepError, match="the directory the sweep was started from is unknown; it would now mean"):
        load_sweep_config(sweep)


def test_absolute_stores_load_unchanged(tmp_path, elsewhere) -> None:
    sweep = _old_sweep(tmp_path / "project", storage_path="./sweeps")
    data = yaml.safe_load((sweep / "sweeper.yaml").read_text())
    data["tracking"]["uri"] = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (sweep / "sweeper.yaml").write_text(yaml.safe_dump(data))
    assert load_sweep_config(sweep).tracking.uri == f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
