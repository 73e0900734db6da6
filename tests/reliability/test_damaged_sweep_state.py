"""A sweep whose saved state is damaged is refused, never started over.

Ray Tune, asked to restore an experiment state it cannot read, logs "Failed to restore the run
state" and starts a new experiment: a resume would train new trials and the report would hold
only them. So ``sweeper resume`` checks Tune's experiment state, its saved search state and
``tuner.pkl`` first, and stops with one line naming the file, exit code 2, and the sweep
directory and MLflow records unchanged; ``status`` and ``compare`` read the same state and stop
the same way. Also here: ``compare --out`` naming a file is refused before any report file is
rewritten; ``status``/``compare`` of a sweep whose saved config no longer matches its trials do
not crash; and a resume from another directory logs into the sweep's saved MLflow store.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeper.cli import main
from sweeper.config import load_config
from sweeper.sweep import run_sweep
from tests.helpers import tiny_config_data

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-trial sweep (1 epoch each); returns its directory."""
    root = tmp_path_factory.mktemp("damaged")
    data = tiny_config_data(root)
    data["train"]["epochs"] = 1
    data["evaluation"]["oracle"] = []
    data["search"]["space"] = {"method.params.cov_weight": {"values": [0.0, 1.0]}}
    result = run_sweep(load_config(data=data), verbose=0, progress=False)
    assert set(result.table["status"]) == {"ok"}
    return result.directory


def _files(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _runs(sweep: Path) -> list[tuple]:
    client = MlflowClient(f"sqlite:///{sweep.parent.parent / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    return sorted(
        (run.info.run_id, run.info.status, run.info.end_time, sorted(run.data.tags.items()), run.data.metrics)
        for run in client.search_runs([experiment.experiment_id])
    )


@contextlib.contextmanager
def _damaged(path: Path, content: bytes | None) -> Iterator[None]:
    """``path`` replaced by ``content`` (deleted for None) while the block runs."""
    original = path.read_bytes()
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    try:
        yield
    finally:
        path.write_bytes(original)


def _one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("sweeper: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


def _state(sweep: Path) -> Path:
    (state,) = sweep.glob("experiment_state-*.json")
    return state


def _search_state(sweep: Path) -> Path:
    (state,) = sweep.glob("basic-variant-state-*.json")
    return state


DAMAGES = {
    "truncated experiment state": (_state, lambda data: data[: len(data) // 3], "experiment state cannot be read"),
    "deleted experiment state": (_state, lambda data: None, "experiment state is missing"),
    "truncated search state": (_search_state, lambda data: data[:40], "saved search state is damaged"),
    "deleted search state": (_search_state, lambda data: None, "saved search state is missing"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_resume_of_a_damaged_state_changes_nothing(sweep: Path, capsys, damage: str) -> None:
    which, damaging, expected = DAMAGES[damage]
    target = which(sweep)
    with _damaged(target, damaging(target.read_bytes())):
        files, runs = _files(sweep), _runs(sweep)
        line = _one_error_line(capsys, ["resume", str(sweep), "--quiet"], expected)
        assert target.name in line or "*" in line  # the file, or its pattern when deleted
        assert _files(sweep) == files and _runs(sweep) == runs


@pytest.mark.parametrize("command", ["status", "compare"])
def test_status_and_compare_of_a_truncated_state_are_one_line(sweep: Path, capsys, command: str) -> None:
    target = _state(sweep)
    with _damaged(target, target.read_bytes()[:5000]):
        files = _files(sweep)
        _one_error_line(capsys, [command, str(sweep)], f"{target.name}: Ray Tune's experiment state cannot be read")
        assert _files(sweep) == files  # compare rewrote no report file


def test_resume_with_a_garbage_tuner_pkl_changes_nothing(sweep: Path, capsys) -> None:
    with _damaged(sweep / "tuner.pkl", b"\x80\x05not a pickle at all" * 8):
        files, runs = _files(sweep), _runs(sweep)
        _one_error_line(capsys, ["resume", str(sweep), "--quiet"], "tuner.pkl: Ray Tune cannot restore the sweep")
        assert _files(sweep) == files and _runs(sweep) == runs


def test_compare_out_naming_a_file_is_refused_before_any_report_is_rewritten(sweep: Path, tmp_path, capsys) -> None:
    out = tmp_path / "combined.md"
    out.write_text("my notes")
    files = _files(sweep)
    _one_error_line(capsys, ["compare", str(sweep), "--out", str(out), "--no-tracking"], f"--out {out}: is a file")
    assert _files(sweep) == files and out.read_text() == "my notes"


@pytest.mark.parametrize(
    "edit",
    [
        {"search": {"space": {"train.lr": {"values": [0.001, 0.01]}}}, "selection": {"param": "train.lr"}},
        {"search": {"num_samples": 3}},
        {"evaluation": {"label_free": ["rankme", "alpha_req"]}},
    ],
    ids=["another searched key", "more seeds than ran", "metrics the trials never reported"],
)
def test_status_and_compare_of_a_sweep_whose_config_no_longer_matches_do_not_crash(sweep: Path, capsys, edit) -> None:
    config_file = sweep / "sweeper.yaml"
    data = yaml.safe_load(config_file.read_text())
    for section, values in edit.items():
        data[section] |= values
    with _damaged(config_file, yaml.safe_dump(data, sort_keys=False).encode()):
        for argv in (["status", str(sweep)], ["compare", str(sweep), "--no-tracking"]):
            code = main(argv)
            captured = capsys.readouterr()
            lines = [line for line in captured.err.splitlines() if line.strip()]
            assert "Traceback" not in captured.err
            assert code == 0 or (code == 2 and len(lines) == 1 and lines[0].startswith("sweeper: error: ")), argv
            if code == 0:
                assert "Sweep tiny" in captured.out


def test_resume_from_another_directory_uses_the_saved_store(sweep: Path, tmp_path, monkeypatch, capsys) -> None:
    """Last in the module: it resumes the (finished) sweep for real."""
    runs = {run[0] for run in _runs(sweep)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["resume", str(sweep), "--quiet"]) == 0, capsys.readouterr().err[-3000:]
    assert list(elsewhere.iterdir()) == []  # no mlflow.db (nor sweeps/) created here
    after = _runs(sweep)
    assert {run[0] for run in after} == runs  # the same parent and children, none added
    assert {run[1] for run in after} == {"FINISHED"}
