"""A crash in the middle of writing trials.csv, the report or the config never leaves a
truncated file: the previous version stays whole until the new one is complete."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from sweeper.report import write_atomic

REPO = Path(__file__).resolve().parents[2]


def test_sigkill_during_a_write_keeps_the_previous_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "trials.csv"
    old = pd.DataFrame({"trial_id": ["a", "b"], "rankme/embedding": [3.0, 4.0]})
    write_atomic(target, old.to_csv(index=False))
    # A child process writes a large new version and is SIGKILLed before it is renamed.
    code = f"""
import os, signal
from pathlib import Path
from sweeper.report import write_atomic

def die(fd):  # the new content is on its way to disk, the rename has not happened yet
    os.kill(os.getpid(), signal.SIGKILL)

os.fsync = die
write_atomic(Path({str(target)!r}), "trial_id,rankme/embedding\\n" + "x,1.0\\n" * 100000)
"""
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == -9  # it really died mid-write
    pd.testing.assert_frame_equal(pd.read_csv(target), old)  # the old file, whole
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "trials.csv"]
    assert leftovers == [".trials.csv.partial"]  # only the abandoned temporary file


def test_write_atomic_replaces_and_returns_the_path(tmp_path: Path) -> None:
    target = tmp_path / "report.md"
    assert write_atomic(target, "first") == target
    write_atomic(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]
