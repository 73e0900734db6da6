"""Config input that used to slip through (or crash) is refused by ``sweeper run`` with exit code 2
and ONE line ``sweeper: error: <key>: <problem and fix>``, no traceback, and nothing written: no
sweep directory, no ``mlflow.db``. What must be accepted (scientific notation, relative paths)
comes back typed and absolute.

Each class of the reliability issue has its own test, parametrised over its instances. The base
config is the issue's: relative ``storage_path`` and sqlite URI, so a leak would land in the
test's working directory (``tmp_path``), which is checked to stay empty.
"""

from __future__ import annotations

import copy
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from sweeper import cli
from sweeper.cli import main
from sweeper.config import load_config
from sweeper.selection import select_plateau
from sweeper.tracking import redact

REPO = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = yaml.safe_load(
    """
name: tiny
storage_path: ./sweeps
seed: 0
data: {dataset: digits, image_size: 16}
method: {name: vicreg, params: {inv_weight: 25.0, var_weight: 25.0, cov_weight: 1.0}}
model: {backbone: small_cnn, projector: [64, 32]}
train: {epochs: 1, batch_size: 128, warmup_epochs: 0}
evaluation: {every_n_epochs: 1, rankme_samples: 512, oracle: []}
search: {algorithm: grid, space: {method.params.cov_weight: {values: [0.0, 1.0]}}, max_concurrent: 1,
         resources: {cpu: 1, gpu: 0}}
tracking: {uri: sqlite:///mlflow.db}
"""
)


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return data


def _config(changes: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        _set(data, dotted, value)
    return data


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The directory ``sweeper run`` runs in (where ./sweeps and mlflow.db would appear)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def no_sweep(*args: object, **kwargs: object) -> int:
        raise AssertionError("the config was accepted: a sweep would have started")

    monkeypatch.setattr(cli, "_sweep_and_print", no_sweep)
    return run_dir


def _write_config(tmp_path: Path, text: str | bytes) -> Path:
    """The config file, outside the working directory (it may hold a planted secret)."""
    path = tmp_path / "configs" / "config.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _sweeper_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: Any, *extra: str) -> tuple[int, str, str]:
    config = _write_config(tmp_path, data if isinstance(data, str | bytes) else yaml.safe_dump(data))
    code = main(["run", str(config), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_refused(code: int, err: str, workdir: Path, key: str, *fixes: str) -> str:
    """Exit 2, one ``sweeper: error: <key>: ...`` line holding each fix, nothing written."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"sweeper: error: {key}: "), lines[0]
    for fix in fixes:
        assert fix in lines[0], lines[0]
    assert "Traceback" not in err
    assert list(workdir.iterdir()) == [], sorted(p.name for p in workdir.iterdir())
    return lines[0]


# --------------------------------------------------------------------------- 4. numbers


@pytest.mark.parametrize(
    ("grid", "expected"),
    [
        ("[1e-4, 1e-3, 1e-2]", [1e-4, 1e-3, 1e-2]),  # YAML 1.1 (PyYAML) reads these as strings
        ("['1e-4', '1e-3', '1e-2']", [1e-4, 1e-3, 1e-2]),
        ("['10', '9', '0.5']", [10.0, 9.0, 0.5]),
        ("[1, 2.5E+1, '3']", [1.0, 25.0, 3.0]),
    ],
)
def test_grid_values_of_a_numeric_parameter_are_typed_numbers(
    tmp_path: Path, workdir: Path, grid: str, expected: list[float]
) -> None:
    text = yaml.safe_dump(_config({"search.space": {}, "selection.param": "train.lr"}))
    path = _write_config(tmp_path, text.replace("space: {}", f"space: {{train.lr: {{values: {grid}}}}}"))
    config = load_config(path)
    values = config.search.space["train.lr"].values
    assert values == expected and all(type(value) is float for value in values)
    assert config.to_dict()["search"]["space"]["train.lr"]["values"] == expected  # saved as numbers


def test_the_plateau_rule_orders_typed_grid_values_as_numbers(tmp_path: Path, workdir: Path) -> None:
    """["10", "9", "0.5"]: lexicographically '0.5' < '10' < '9', so the plateau (first value
    within 1 % of the maximum) would be '10'; numerically it is 9."""
    config = load_config(data=_config({"search.space": {"train.lr": {"values": ["10", "9", "0.5"]}}}))
    values = config.search.space["train.lr"].values
    rank = {10.0: 10.0, 9.0: 9.95, 0.5: 5.0}
    table = pd.DataFrame(
        {"trial_id": ["a", "b", "c"], "train.lr": values, "rankme/embedding": [rank[v] for v in values]}
    )
    table["status"] = "ok"
    pick = select_plateau(table, metric="rankme/embedding", param="train.lr", params=["train.lr"], tolerance=0.01)
    assert pick is not None and pick.params == {"train.lr": 9.0}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("train: {lr: 1e-4}", 1e-4), ("train: {lr: 5E-3}", 5e-3), ("train: {lr: 1.0e-3}", 1e-3)],
)
def test_scientific_notation_is_a_float_everywhere(tmp_path: Path, workdir: Path, text: str, expected: float) -> None:
    body = yaml.safe_dump({key: value for key, value in BASE.items() if key != "train"})
    config = load_config(_write_config(tmp_path, body + text + "\n"), overrides=["evaluation.knn_temperature=7e-2"])
    assert config.train.lr == expected and config.evaluation.knn_temperature == 0.07


@pytest.mark.parametrize(
    ("space", "key", "fix"),
    [
        ({"train.lr": {"values": ["ten", "1e-3"]}}, "search.space.train.lr", "valid number"),
        ({"train.lr": {"values": [True, 1e-3]}}, "search.space.train.lr", "takes a number, not a boolean"),
        ({"train.epochs": {"values": ["2.5"]}}, "search.space.train.epochs", "valid integer"),
    ],
)
def test_non_numeric_grid_values_are_refused(
    tmp_path: Path, workdir: Path, capsys: pytest.CaptureFixture[str], space: dict, key: str, fix: str
) -> None:
    param = next(iter(space))
    data = _config({"search.space": space, "selection.param": param})
    code, _, err = _sweeper_run(tmp_path, capsys, data)
    _assert_refused(code, err, workdir, key, fix)


# --------------------------------------------------------------------------- 6 + 3. paths


def test_relative_paths_and_stores_are_made_absolute_at_load(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "data" / "cifar").mkdir(parents=True)
    (workdir / "ood").mkdir()
    data = _config(
        {
            "data": {"dataset": "cifar10", "root": "data/cifar", "image_size": 16},
            "evaluation.oracle": ["linear"],
            "evaluation.oracle_datasets": [{"dataset": "imagefolder", "root": "./ood"}],
            "search.storage": "sqlite:///optuna.db?timeout=30",
            "tracking.uri": "sqlite:///stores/../mlflow.db",
        }
    )
    config = load_config(_write_config(tmp_path, yaml.safe_dump(data)))
    root = str(workdir)
    assert str(config.data.root) == f"{root}/data/cifar"
    assert str(config.evaluation.oracle_datasets[0].root) == f"{root}/ood"
    assert config.storage_path == f"{root}/sweeps"
    assert config.search.storage == f"sqlite:///{root}/optuna.db?timeout=30"
    assert config.tracking.uri == f"sqlite:///{root}/mlflow.db" and config.tracking.uri.startswith("sqlite:////")
    journal = load_config(data=data, overrides={"search.storage": "journal:optuna.journal"})
    assert journal.search.storage == f"journal:{root}/optuna.journal"

    # A trial worker or a resume elsewhere reads the saved config: the same files.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = load_config(data=config.to_dict())
    assert again == config
    assert again.with_overrides({"method.params.cov_weight": 0.0}).tracking.uri == config.tracking.uri


@pytest.mark.parametrize(
    "uri", ["sqlite:////already/abs.db", "sqlite:///:memory:", "sqlite://", "http://127.0.0.1:5000", "databricks"]
)
def test_other_tracking_uris_are_left_alone(workdir: Path, uri: str) -> None:
    assert load_config(data=_config({"tracking.uri": uri})).tracking.uri == uri


# --------------------------------------------------------------------------- 10. secrets

SECRET_CASES = [
    ("tracking.uri", "HTTP://alice:S3cretPW@127.0.0.1:1/", "S3cretPW", "MLFLOW_TRACKING_PASSWORD"),
    ("tracking.uri", "http://alice:S3cr/etPW@127.0.0.1:1/", "S3cr/etPW", "MLFLOW_TRACKING_PASSWORD"),
    ("tracking.uri", "https://tok3nS3cret@mlflow.example.org", "tok3nS3cret", "MLFLOW_TRACKING_TOKEN"),
    ("tracking.uri", "PostgreSQL://mlflow:pgS3cret@db:5432/mlflow", "pgS3cret", "PGPASSWORD"),
    ("storage_path", "s3://AKIAKEY42:awsS3cretKey@bucket/sweeps", "awsS3cretKey", "AWS_SECRET_ACCESS_KEY"),
    ("storage_path", "S3://bucket/sweeps?secret_key=awsS3cretKey", "awsS3cretKey", "AWS_SECRET_ACCESS_KEY"),
    ("search.storage", "postgresql+psycopg://sweeper:pgS3cret@127.0.0.1:5432/optuna", "pgS3cret", "~/.pgpass"),
    ("search.storage", "postgresql://sweeper@127.0.0.1/optuna?password=pgS3cret", "pgS3cret", "PGPASSWORD"),
]


@pytest.mark.parametrize(("key", "uri", "secret", "env"), SECRET_CASES, ids=[c[1] for c in SECRET_CASES])
@pytest.mark.parametrize("via", ["file", "--set"])
def test_credentials_in_any_uri_are_refused_and_never_echoed(
    tmp_path: Path,
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    key: str,
    uri: str,
    secret: str,
    env: str,
    via: str,
) -> None:
    data = _config({"search.algorithm": "optuna"} if key == "search.storage" else {})
    extra: list[str] = []
    if via == "file":
        _set(data, key, uri)
    else:
        extra = ["--set", f"{key}={uri}"]
    code, out, err = _sweeper_run(tmp_path, capsys, data, *extra)
    line = _assert_refused(code, err, workdir, key, "credentials do not belong in the URI", env, "***")
    assert secret not in out + err, line
    for path in workdir.rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(("key", "uri", "secret", "env"), SECRET_CASES, ids=[c[1] for c in SECRET_CASES])
def test_redact_hides_any_userinfo_in_any_case(key: str, uri: str, secret: str, env: str) -> None:
    text = f"logged {uri} and more"
    assert secret not in redact(text) and "***" in redact(text)
    assert redact(text).startswith("logged ") and redact(text).endswith(" and more")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("postgresql://sweeper@127.0.0.1:5432/optuna", "postgresql://sweeper@127.0.0.1:5432/optuna"),
        ("sqlite:////home/me@lab/optuna.db", "sqlite:////home/me@lab/optuna.db"),
        ("sqlite:///optuna.db", "sqlite:///{workdir}/optuna.db"),
    ],
)
def test_uris_without_credentials_are_accepted(workdir: Path, uri: str, expected: str) -> None:
    config = load_config(data=_config({"search.algorithm": "optuna", "search.storage": uri}))
    assert config.search.storage == expected.format(workdir=workdir)


# --------------------------------------------------------------------------- 11. not UTF-8


def _subprocess_run(config: Path, workdir: Path, *, memory_bytes: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:  # a bomb that got through must fail here, not take the machine down
        if memory_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "sweeper.cli", "run", str(config)],
        cwd=workdir,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
        env=env,
        preexec_fn=limit,
    )


@pytest.mark.parametrize(
    "content", [b"name: caf\xe9\n", b"\xff\xfename: x\n", yaml.safe_dump(BASE).encode() + b"# \x80\n"]
)
def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path, workdir: Path, content: bytes) -> None:
    done = _subprocess_run(_write_config(tmp_path, content), workdir)
    _assert_refused(done.returncode, done.stderr, workdir, str(tmp_path / "configs" / "config.yaml"), "UTF-8")


# --------------------------------------------------------------------------- 13. values


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("train.lr", ".inf"),
        ("train.lr", "'inf'"),
        ("train.weight_decay", ".nan"),
        ("evaluation.knn_temperature", ".inf"),
        ("search.reduction_factor", ".inf"),
        ("evaluation.collapse.floor", "-.inf"),
        ("method.params.inv_weight", ".inf"),  # used to blame cov_weight
        ("method.params.var_weight", "Infinity"),
    ],
)
def test_non_finite_floats_are_refused_naming_the_key(
    tmp_path: Path, workdir: Path, capsys: pytest.CaptureFixture[str], key: str, value: str
) -> None:
    code, _, err = _sweeper_run(tmp_path, capsys, copy.deepcopy(BASE), "--set", f"{key}={value}")
    _assert_refused(code, err, workdir, key, "finite number")


@pytest.mark.parametrize(
    ("space", "key"),
    [
        (
            {"method.params.cov_weight": {"values": [0.0, float("inf")]}},
            "search.space.method.params.cov_weight.values[1]",
        ),
        ({"train.lr": {"low": 1e-4, "high": float("inf")}}, "search.space.train.lr.high"),
    ],
)
def test_non_finite_search_values_are_refused(
    tmp_path: Path, workdir: Path, capsys: pytest.CaptureFixture[str], space: dict, key: str
) -> None:
    data = _config({"search.algorithm": "optuna", "search.space": space, "selection.param": next(iter(space))})
    code, _, err = _sweeper_run(tmp_path, capsys, data)
    _assert_refused(code, err, workdir, key, "finite number")


@pytest.mark.parametrize("value", ["[a: b", "{x: [1", "'unclosed", "a: b: c", "[1, 2]]"])
def test_bad_yaml_in_set_is_one_line(
    tmp_path: Path, workdir: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    code, _, err = _sweeper_run(tmp_path, capsys, copy.deepcopy(BASE), "--set", f"train.lr={value}")
    _assert_refused(code, err, workdir, "--set train.lr", "not valid YAML at line 1", "fix the syntax")


@pytest.mark.parametrize(
    ("key", "value"),
    [("name", "nl\n"), ("name", "tab\there"), ("name", "bell\x07"), ("tracking.experiment", "exp\r\n")],
)
def test_control_characters_are_refused(
    tmp_path: Path, workdir: Path, capsys: pytest.CaptureFixture[str], key: str, value: str
) -> None:
    code, _, err = _sweeper_run(tmp_path, capsys, _config({key: value}))
    _assert_refused(code, err, workdir, key, "control character", "remove it")


OBJECTIVE_CASES = [
    ("label_free/stabel_rank", {}, "did you mean 'stable_rank'?"),
    ("label_free/stable_rank", {}, "add it to evaluation.label_free"),
    ("oracle/linear/cifar10", {"evaluation.oracle": ["linear"]}, "no oracle data set 'cifar10'"),
    ("oracle/linear/digits", {}, "add linear to evaluation.oracle"),
    ("oracle/knn/digits", {"evaluation.oracle": ["linear"]}, "add knn to evaluation.oracle"),
    ("oracle/linear/ood_mean", {"evaluation.oracle": ["linear"]}, "list them in evaluation.oracle_datasets"),
    ("rankme/prototypes", {}, "not a metric of this sweep"),
]


@pytest.mark.parametrize(("objective", "changes", "fix"), OBJECTIVE_CASES, ids=[c[0] for c in OBJECTIVE_CASES])
def test_an_objective_the_trials_never_report_is_refused(
    tmp_path: Path, workdir: Path, capsys: pytest.CaptureFixture[str], objective: str, changes: dict, fix: str
) -> None:
    code, _, err = _sweeper_run(tmp_path, capsys, _config({**changes, "search.objective": objective}))
    _assert_refused(code, err, workdir, "search.objective", objective, fix)


def test_the_objectives_a_config_offers_are_the_metrics_its_trials_report(tmp_path: Path, workdir: Path) -> None:
    (workdir / "blurred").mkdir()
    data = _config(
        {
            "method": {"name": "dino"},
            "search.space": {"method.params.teacher_temp": {"values": [0.04, 0.07]}},
            "evaluation.label_free": ["rankme", "stable_rank", "lidar"],
            "evaluation.oracle": ["linear", "knn"],
            "evaluation.oracle_datasets": [{"dataset": "digits"}, {"dataset": "imagefolder", "root": "blurred"}],
        }
    )
    config = load_config(data=data)
    names = ["digits", "digits-2", "blurred"]
    assert config.objective_metrics() == [
        "rankme/embedding",
        "rankme/representation",
        "rankme/prototypes",
        "label_free/stable_rank",
        "label_free/lidar",
        *[f"oracle/linear/{name}" for name in names],
        *[f"oracle/knn/{name}" for name in names],
        "oracle/linear/ood_mean",
    ]
    for objective in config.objective_metrics():
        assert load_config(data=data, overrides={"search.objective": objective}).search.objective == objective


def _alias_bomb(levels: int = 9) -> str:
    """A few hundred bytes whose aliases expand to 10**(levels + 1) values."""
    lines = ["name: bomb", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        (_alias_bomb(), "aliases expand to more than"),
        (yaml.safe_dump(BASE) + "search: {space: &s {x: [*s]}}\n", "refers to itself"),
        ("name: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ],
    ids=["alias bomb", "recursive alias", "deep nesting"],
)
def test_alias_bombs_are_refused_before_expansion(tmp_path: Path, workdir: Path, text: str, fix: str) -> None:
    config = _write_config(tmp_path, text)
    done = _subprocess_run(config, workdir, memory_bytes=4 * 2**30)
    _assert_refused(done.returncode, done.stderr, workdir, str(config), fix)


def test_small_aliases_still_work(tmp_path: Path, workdir: Path) -> None:
    text = yaml.safe_dump({key: value for key, value in BASE.items() if key not in ("data", "evaluation")})
    text += "data: &digits {dataset: digits, image_size: 16}\n"
    text += "evaluation: {rankme_samples: 512, oracle: [linear], oracle_datasets: [*digits, *digits]}\n"
    config = load_config(_write_config(tmp_path, text))
    assert [data.dataset for data in config.evaluation.oracle_datasets] == ["digits", "digits"]
    assert config.oracle_dataset_names() == ["digits", "digits-2", "digits-3"]


# --------------------------------------------------------------------------- 5. selection.param


@pytest.mark.parametrize("rule", ["max", "plateau"])
@pytest.mark.parametrize("param", ["train.lr", "method.params.cov_wieght"])
def test_selection_param_must_be_searched_whatever_the_rule(
    tmp_path: Path, workdir: Path, capsys: pytest.CaptureFixture[str], rule: str, param: str
) -> None:
    data = _config({"selection": {"rule": rule, "param": param}})
    code, _, err = _sweeper_run(tmp_path, capsys, data)
    line = _assert_refused(
        code, err, workdir, "selection.param", f"{param!r} is not searched", "method.params.cov_weight"
    )
    assert ("did you mean" in line) == (param == "method.params.cov_wieght")


def test_max_rule_without_param_is_fine(workdir: Path) -> None:
    assert load_config(data=_config({"selection": {"rule": "max"}})).selection.param is None
