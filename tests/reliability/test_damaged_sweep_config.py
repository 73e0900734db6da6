"""A damaged saved ``sweeper.yaml`` (binary, not YAML, not a mapping) stops ``sweeper resume``,
``status`` and ``compare`` with one line naming the file, exit code 2, and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweeper.errors import SweepError
from sweeper.sweep import load_sweep_config
from tests.helpers import tiny_config_data

DAMAGED = {
    "binary": (b"\x80\x81\xff\x00garbage", "not UTF-8 text"),
    "not_yaml": (b"name: [unclosed\n  : :\n", "not valid YAML at line 2"),
    "a_list": (b"- name\n- tiny\n", "not a mapping"),
    "empty": (b"", "not a mapping"),
}


def _sweep_dir(tmp_path: Path, content: bytes) -> Path:
    directory = tmp_path / "sweeps" / "tiny"
    directory.mkdir(parents=True)
    (directory / "sweeper.yaml").write_bytes(content)
    return directory


def test_an_intact_saved_config_loads(tmp_path: Path) -> None:
    """The control: the same path with a valid file loads, named after its directory."""
    data = tiny_config_data(tmp_path, name="other")
    directory = _sweep_dir(tmp_path, yaml.safe_dump(data).encode())
    config = load_sweep_config(directory)
    assert config.name == "tiny"
    assert Path(config.storage_path) == directory.parent
    assert config.search.space["method.params.cov_weight"].values == [0.0, 1.0, 8.0]


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_damaged_saved_config_is_one_sweep_error(tmp_path: Path, kind: str) -> None:
    content, expected = DAMAGED[kind]
    directory = _sweep_dir(tmp_path, content)
    with pytest.raises(SweepError) as raised:
        load_sweep_config(directory)
    message = str(raised.value)
    assert expected in message
    assert str(directory / "sweeper.yaml") in message
    assert "\n" not in message


@pytest.mark.parametrize(("command", "kind"), [("resume", "binary"), ("status", "not_yaml"), ("compare", "a_list")])
def test_cli_prints_one_line_and_exits_2(tmp_path: Path, command: str, kind: str) -> None:
    content, expected = DAMAGED[kind]
    directory = _sweep_dir(tmp_path, content)
    result = subprocess.run(
        [sys.executable, "-m", "sweeper.cli", command, str(directory)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 2, result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("sweeper: error: ") and expected in lines[0]
    assert "Traceback" not in result.stderr
