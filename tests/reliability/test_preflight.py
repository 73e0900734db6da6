"""What a sweep can check before its first trial, it checks before it writes anything.

Each case once failed late: inside every trial (the sweep then "succeeded" with every trial
failed), or after the sweep directory, ``mlflow.db`` and a RUNNING parent run existed, or never
(an in-memory tracking store loses every metric). Now each stops ``sweeper run`` with exit code
2 and one line ``sweeper: error: <key or file>: ...`` naming the fix, no traceback, no sweep
directory and no MLflow store. The same for the arguments of ``status``/``resume``/``submit``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sweeper.cli import main
from tests.helpers import tiny_config_data


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _file(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _set(key: str, value: Callable[[Path], Any] | Any) -> Callable[[dict, Path], None]:
    def apply(data: dict, tmp: Path) -> None:
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value(tmp) if callable(value) else value

    return apply


def _optuna(storage: Callable[[Path], str] | str) -> Callable[[dict, Path], None]:
    def apply(data: dict, tmp: Path) -> None:
        data["search"] |= {
            "algorithm": "optuna",
            "num_samples": 2,
            "space": {"method.params.cov_weight": {"low": 0.0, "high": 8.0}},
            "storage": storage(tmp) if callable(storage) else storage,
        }

    return apply


def _imagefolder(*files: str) -> Callable[[dict, Path], None]:
    def apply(data: dict, tmp: Path) -> None:
        root = tmp / "images"
        root.mkdir()
        for name in files:
            if name.endswith("/"):
                (root / name).mkdir(parents=True)
            else:
                _file(root / name, b"\x89PNG not really")
        data["data"] = {"dataset": "imagefolder", "root": str(root), "image_size": 8}

    return apply


def _busy_db(tmp: Path) -> str:
    _file(tmp / "mlflow.db", b"not a database " * 64)
    return f"sqlite:///{tmp / 'mlflow.db'}"


# (case, how to break the config, what the one line must say)
CASES = [
    ("tracking: unknown scheme", _set("tracking.uri", "ftp://x"), "tracking.uri 'ftp://x': MLflow cannot track to ftp"),
    ("tracking: in-memory sqlite", _set("tracking.uri", "sqlite://"), "tracking.uri 'sqlite://' is an in-memory"),
    ("tracking: :memory:", _set("tracking.uri", "sqlite:///:memory:"), "is an in-memory database"),
    (
        "tracking: sqlite naming a directory",
        _set("tracking.uri", lambda tmp: f"sqlite:///{tmp}"),
        "is a directory: name a file",
    ),
    ("tracking: corrupt mlflow.db", _set("tracking.uri", _busy_db), "is not a usable SQLite database"),
    (
        "tracking: sqlite in a missing directory",
        _set("tracking.uri", "sqlite:////no/such/dir/mlflow.db"),
        "tracking.uri 'sqlite:////no/such/dir/mlflow.db': directory '/no/such/dir' does not exist",
    ),
    (
        "tracking: unreachable postgresql",
        _set("tracking.uri", lambda tmp: f"postgresql://sweeper@127.0.0.1:{_closed_port()}/mlflow"),
        "is unreachable (Connection refused): start it, or fix tracking.uri",
    ),
    (
        "optuna storage in a missing directory",
        _optuna("sqlite:////no/such/dir/optuna.db"),
        "search.storage 'sqlite:////no/such/dir/optuna.db': directory '/no/such/dir' does not exist",
    ),
    (
        "optuna storage corrupt",
        _optuna(lambda tmp: f"sqlite:///{_file(tmp / 'optuna.db', b'garbage' * 99)}"),
        "search.storage 'sqlite:///",
    ),
    (
        "optuna storage unreachable",
        _optuna(lambda tmp: f"postgresql://127.0.0.1:{_closed_port()}/optuna"),
        "search.storage 'postgresql://127.0.0.1:",
    ),
    (
        "optuna journal in a missing directory",
        _optuna("journal:/no/such/dir/optuna.log"),
        "search.storage 'journal:/no/such/dir/optuna.log': directory '/no/such/dir' does not exist",
    ),
    (
        "storage_path is a file",
        _set("storage_path", lambda tmp: str(_file(tmp / "a-file"))),
        "a-file is not a directory): give a writable one",
    ),
    ("storage_path /dev/null", _set("storage_path", "/dev/null"), "storage_path '/dev/null': cannot create the sweep"),
    ("storage_path under /proc", _set("storage_path", "/proc/sweeps"), "storage_path '/proc/sweeps': cannot create"),
    ("storage_path unwritable (sysfs)", _set("storage_path", "/sys/sweeps"), "storage_path '/sys/sweeps': cannot"),
    ("imagefolder root empty", _imagefolder(), "has no train/ directory: an imagefolder root needs train/<class>"),
    ("imagefolder without val/", _imagefolder("train/a/1.png"), "has no val/ directory"),
    ("imagefolder class without images", _imagefolder("train/a/1.png", "val/a/"), "val/a/ holds no image"),
    (
        "imagefolder splits differ",
        _imagefolder("train/a/1.png", "val/b/1.png"),
        "train/ and val/ must hold the same class folders",
    ),
    (
        "cifar10 root without the batches",
        lambda data, tmp: data.update(data={"dataset": "cifar10", "root": str(_file(tmp / "c" / "x").parent)}),
        "has no cifar-10-batches-py/data_batch_1: put the extracted cifar10 data set there",
    ),
    ("infinite learning rate", _set("train.lr", float("inf")), "train.lr: Input should be a finite number"),
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield tmp_path


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("sweeper: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(("case", "breaks", "expected"), CASES, ids=[case[0] for case in CASES])
def test_refused_before_anything_is_written(workdir: Path, capsys, case: str, breaks, expected: str) -> None:
    data = tiny_config_data(workdir)
    breaks(data, workdir)
    (workdir / "config.yaml").write_text(yaml.safe_dump(data))
    before = {path: path.read_bytes() for path in workdir.rglob("*") if path.is_file()}
    _refused(capsys, ["run", "config.yaml"], expected)
    after = {path: path.read_bytes() for path in workdir.rglob("*") if path.is_file()}
    assert after == before  # no sweep directory, no mlflow.db, a corrupt store left as it was
    assert not (workdir / "sweeps").exists()


def test_cuda_on_a_machine_without_it_is_refused(workdir: Path, capsys) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    data = tiny_config_data(workdir)
    data["train"]["device"] = "cuda"
    (workdir / "config.yaml").write_text(yaml.safe_dump(data))
    _refused(capsys, ["run", "config.yaml"], "train.device: 'cuda' but this machine has no CUDA device")
    assert not (workdir / "sweeps").exists() and not (workdir / "mlflow.db").exists()


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A TCP server that accepts connections and never answers (a black-holed endpoint)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"127.0.0.1:{server.getsockname()[1]}"


def test_unreachable_object_storage_is_a_bounded_one_line_error(
    workdir: Path, capsys, monkeypatch, silent_endpoint: str
) -> None:
    monkeypatch.setenv("SWEEPER_STORAGE_TIMEOUT_S", "2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage = f"s3://bucket/sweeps?endpoint_override={silent_endpoint}&scheme=http&region=us-east-1"
    data = tiny_config_data(workdir, storage_path=storage)
    (workdir / "config.yaml").write_text(yaml.safe_dump(data))
    started = time.monotonic()
    _refused(capsys, ["run", "config.yaml"], "storage_path: cannot reach storage 's3://bucket/sweeps/tiny?")
    assert time.monotonic() - started < 20  # pyarrow alone retries for ~100 s
    assert not (workdir / "mlflow.db").exists()
    started = time.monotonic()
    _refused(capsys, ["status", "tiny", "--storage-path", storage], "cannot reach storage 's3://bucket/sweeps/tiny?")
    assert time.monotonic() - started < 20


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("ftp://x/sweeps", "--storage-path 'ftp://x/sweeps': unsupported storage scheme 'ftp'"),
        ("s3://", "--storage-path 's3://': the URI names no bucket/container"),
        ("s3:///sweeps", "--storage-path 's3:///sweeps': the URI names no bucket/container"),
    ],
)
@pytest.mark.parametrize("command", ["status", "resume", "compare"])
def test_an_unusable_storage_path_argument_is_one_line(workdir: Path, capsys, command: str, storage, expected) -> None:
    _refused(capsys, [command, "tiny", "--storage-path", storage], expected)
    assert list(workdir.iterdir()) == []


def test_submit_with_a_runtime_env_that_is_not_yaml_is_one_line(workdir: Path, capsys) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(tiny_config_data(workdir)))
    (workdir / "env.yaml").write_text("pip: [torch\nenv_vars: {A: 1")
    _refused(
        capsys,
        ["submit", "config.yaml", "--address", f"http://127.0.0.1:{_closed_port()}", "--runtime-env", "env.yaml"],
        "--runtime-env env.yaml: not valid YAML at line",
    )
