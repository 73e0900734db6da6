"""The console view of a running sweep: fed with fake Tune trials (no Ray), and one real sweep
through the CLI with its output piped."""

from __future__ import annotations

import io
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from sweeper import cli
from sweeper.sweep._progress import (
    Progress,
    ProgressView,
    TrialLine,
    format_duration,
    format_progress,
    progress_table,
    remaining_s,
    trial_line,
    tune_console,
)
from tests.helpers import tiny_config_data
from tests.test_cli import sweeper

COV = "method.params.cov_weight"
SPECTRUM = [0.123456789, 0.0456789]  # a list-valued metric: never on the console


@dataclass
class FakeTrial:
    """What the view reads of Tune's ``Trial``."""

    trial_id: str
    config: dict[str, Any]
    status: str = "PENDING"
    last_result: dict[str, Any] = field(default_factory=dict)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def result(epoch: int, time_total_s: float, rankme: float | None = None, status: str = "running") -> dict[str, Any]:
    out: dict[str, Any] = {"epoch": epoch, "time_total_s": time_total_s, "status": status, "train/loss": 1.5}
    if rankme is not None:
        out |= {"rankme/embedding": rankme, "spectrum/embedding": SPECTRUM}
    return out


def report(view: ProgressView, trials: list[FakeTrial], trial: FakeTrial, res: dict[str, Any]) -> None:
    trial.last_result = res
    view.on_trial_result(0, trials, trial, res)


def plain_view(clock: FakeClock, **kwargs: Any) -> tuple[ProgressView, io.StringIO]:
    out = io.StringIO()
    view = ProgressView(
        name="qs", searched=[COV], epochs=20, max_concurrent=2, console=Console(file=out), clock=clock, **kwargs
    )
    return view, out


def test_trial_line_reads_tune_trial_and_keeps_scalars() -> None:
    trial = FakeTrial("ab_00001", {COV: 0.01, "seed": 3, "train.lr": 0.1}, "RUNNING", result(5, 12.0, 11.5))
    line = trial_line(trial, searched=[COV], epochs=20, rankme=None)
    assert line == TrialLine("ab_00001", {COV: 0.01, "seed": 3}, 5, 20, 11.5, "running", 12.0)
    # A later reported RankMe wins over the last result; a trial ending now gets its final status.
    ended = trial_line(trial, searched=[COV], epochs=20, rankme=13.0, ray_state="TERMINATED")
    assert (ended.rankme, ended.status) == (13.0, "stopped")  # terminated while "running": a scheduler
    trial.last_result = {"epoch": 20, "status": "diverged", "rankme/embedding": [1.0, 2.0]}
    diverged = trial_line(trial, searched=[COV], epochs=20, rankme=None, ray_state="TERMINATED")
    assert (diverged.status, diverged.rankme, diverged.time_s) == ("diverged", None, None)
    # A searched train.epochs is the trial's own total.
    assert trial_line(FakeTrial("x", {"train.epochs": 7}), searched=[], epochs=20, rankme=None).epochs == 7


def test_remaining_time_from_pace_epochs_left_and_concurrency() -> None:
    lines = [
        TrialLine("a", {}, 20, 20, 30.0, "ok", 50.0),  # finished: 2.5 s/epoch
        TrialLine("b", {}, 10, 20, 20.0, "running", 30.0),  # 3 s/epoch, 10 epochs left
        TrialLine("c", {}, 0, 20, None, "pending", None),  # 20 epochs left
    ]
    pace = (50.0 + 30.0) / (20 + 10)
    left = 10 + 20 + 2 * 20  # b, c, and two trials Tune has not created
    assert remaining_s(lines, total=5, epochs=20, concurrency=2) == pytest.approx(pace * left / 2)
    # Never more trials at once than trials left.
    assert remaining_s(lines[:2], total=2, epochs=20, concurrency=4) == pytest.approx(pace * 10 / 1)
    assert remaining_s(lines[2:], total=3, epochs=20, concurrency=2) is None  # no epoch yet


def test_format_progress_and_durations() -> None:
    assert [format_duration(s) for s in (0, 42.4, 185, 7620)] == ["0s", "42s", "3m05s", "2h07m"]
    progress = Progress(
        total=6, finished={"ok": 2, "diverged": 1}, running=2, elapsed_s=62, remaining_s=100, concurrency=2
    )
    assert (progress.done, progress.pending) == (3, 1)
    text = format_progress(progress)
    assert text == (
        "3/6 trials done (1 diverged, 2 ok), 2 running, 1 not started | elapsed 1m02s"
        " | ~1m40s left (pace so far, 2 at a time)"
    )
    done = Progress(total=2, finished={"ok": 2}, running=0, elapsed_s=5, remaining_s=0.0, concurrency=2)
    assert format_progress(done).endswith("| finished")


def test_plain_mode_prints_periodic_lines_and_one_per_finished_trial() -> None:
    clock = FakeClock()
    view, out = plain_view(clock, interval_s=30)
    a, b = FakeTrial("ab_00000", {COV: 0.0}), FakeTrial("ab_00001", {COV: 0.01})
    trials = [a, b]
    view.setup(total_num_samples=4)
    assert out.getvalue() == "qs: 4 trials; progress every 30s\n"
    a.status = b.status = "RUNNING"
    view.on_trial_start(0, trials, a)
    view.on_trial_start(0, trials, b)
    clock.now += 10
    report(view, trials, a, result(5, 10.0, 11.5))
    view.on_step_begin(1, trials)
    assert out.getvalue().count("\n") == 1  # nothing before interval_s
    clock.now += 21  # 31 s
    view.on_step_begin(2, trials)
    block = out.getvalue().splitlines()[1:]
    # Pace 10 s / 5 epochs; epochs left 15 (a) + 20 (b) + 2 x 20 (not created); 2 at a time.
    assert block == [
        "qs: 0/4 trials done, 2 running, 2 not started | elapsed 31s | ~1m15s left (pace so far, 2 at a time)",
        "  trial ab_00000  cov_weight=0  epoch 5/20  RankMe 11.50  running",
        "  trial ab_00001  cov_weight=0.01  epoch 0/20  RankMe -  running",
    ]
    clock.now += 5
    view.on_step_begin(3, trials)
    assert len(out.getvalue().splitlines()) == 4  # the next block waits for the next interval
    report(view, trials, a, result(20, 40.0))  # the last result has no RankMe: the latest one shows
    report(view, trials, a, result(20, 40.0, status="ok"))
    view.on_trial_complete(4, trials, a)
    assert out.getvalue().splitlines()[-1] == "trial ab_00000  cov_weight=0  epoch 20/20  RankMe 11.50  ok"
    b.status = "ERROR"
    view.on_trial_error(5, trials, b)
    assert out.getvalue().splitlines()[-1] == "trial ab_00001  cov_weight=0.01  epoch 0/20  RankMe -  failed"
    view.on_experiment_end(trials)
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("qs: 2/4 trials done (1 failed, 1 ok), 2 not started | elapsed 36s")
    view.close()  # idempotent
    text = out.getvalue()
    assert len(text.splitlines()) == 7
    assert "0.123" not in text and "[" not in text and "╭" not in text and "spectrum" not in text


def test_live_mode_redraws_in_place_and_leaves_the_final_view() -> None:
    clock = FakeClock()
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, height=30, color_system=None)
    view = ProgressView(name="qs", searched=[COV], epochs=20, console=console, clock=clock, refresh_s=1.0)
    trials = [FakeTrial("ab_00000", {COV: 0.0}, "RUNNING"), FakeTrial("ab_00001", {COV: 16.0}, "RUNNING")]
    view.setup(total_num_samples=2)
    for epoch in range(1, 21):
        clock.now += 2
        report(view, trials, trials[0], result(epoch, 2.0 * epoch, 3.0 + epoch, "ok" if epoch == 20 else "running"))
    view.on_trial_complete(0, trials, trials[0])
    frames_before_end = out.getvalue().count("\x1b[1A")
    view.on_experiment_end(trials)
    text = out.getvalue()
    assert frames_before_end > 10  # redrawn in place (cursor up), not appended
    final = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text.rsplit("\x1b[2K", 1)[-1])
    rows = {line.split()[0]: line.split() for line in final.splitlines() if line.startswith("ab_")}
    assert rows == {
        "ab_00000": ["ab_00000", "0", "20/20", "23.00", "ok"],
        "ab_00001": ["ab_00001", "16", "0/20", "-", "running"],
    }
    assert "qs: 1/2 trials done (1 ok), 1 running | elapsed 40s | ~40s left (pace so far, 2 at a time)" in final
    assert "0.123" not in text and "╭" not in text
    assert console.is_terminal and view._live is None  # stopped: stdout is the terminal's again


def test_live_table_keeps_running_trials_when_too_long() -> None:
    lines = [TrialLine(f"t{i:02d}", {COV: float(i)}, 20, 20, 1.0, "ok", 10.0) for i in range(10)]
    lines += [TrialLine("t10", {COV: 10.0}, 3, 20, None, "running", 3.0)]
    progress = Progress(total=11, finished={"ok": 10}, running=1, elapsed_s=1, remaining_s=None, concurrency=1)
    out = io.StringIO()
    Console(file=out, width=100).print(progress_table(lines, progress, title="qs", max_rows=4))
    shown = [line.split()[0] for line in out.getvalue().splitlines() if re.match(r"t\d\d ", line)]
    assert shown == ["t07", "t08", "t09", "t10"]
    assert "7 earlier finished trials not shown" in out.getvalue()


def test_clashing_parameter_names_keep_their_full_key() -> None:
    view, out = plain_view(FakeClock())
    view.searched = ["train.lr", "method.params.lr", COV]
    trial = FakeTrial("x", {"train.lr": 0.1, "method.params.lr": 0.2, COV: 1.0}, "TERMINATED", result(20, 9.0, 2.0))
    view.setup(total_num_samples=1)
    view.on_trial_complete(0, [trial], trial)
    assert "train.lr=0.1  method.params.lr=0.2  cov_weight=1  epoch 20/20" in out.getvalue()


def test_close_before_setup_draws_nothing() -> None:
    view, out = plain_view(FakeClock())
    view.close()
    view.on_step_begin(0, [])
    assert out.getvalue() == ""


class BrokenFile(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("terminal gone")


@pytest.mark.parametrize("terminal", [False, True])
def test_a_view_that_cannot_draw_never_stops_the_sweep(terminal: bool, caplog: pytest.LogCaptureFixture) -> None:
    clock, stdout = FakeClock(), sys.stdout
    console = Console(file=BrokenFile(), force_terminal=terminal)
    view = ProgressView(name="qs", searched=[COV], epochs=20, console=console, clock=clock)
    trial = FakeTrial("ab_00000", {COV: 0.0}, "RUNNING")
    view.setup(total_num_samples=1)  # a plain view's header already fails
    clock.now += 60
    report(view, [trial], trial, result(20, 40.0, 5.0, "ok"))
    view.on_step_begin(1, [trial])
    view.on_trial_complete(2, [trial], trial)
    view.on_experiment_end([trial])
    view.close()
    assert "progress view stopped (OSError: terminal gone)" in caplog.text
    assert caplog.text.count("progress view stopped") == 1 and view._live is None
    assert sys.stdout is stdout  # Live's redirection undone


def test_tune_console_silences_tune_only_at_verbose_0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    with tune_console(verbose=0):
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"
    assert "RAY_AIR_NEW_OUTPUT" not in os.environ
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    with tune_console(verbose=1):
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"
    with pytest.raises(RuntimeError), tune_console(verbose=0):
        raise RuntimeError
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], (0, True)), (["--verbose"], (1, False)), (["--quiet"], (0, False))],
)
def test_cli_flags_choose_the_console_output(
    flags: list[str], expected: tuple[int, bool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sweeper.sweep

    seen: dict[str, Any] = {}

    def fake_run_sweep(config: Any, **kwargs: Any) -> None:
        seen.update(kwargs)
        raise KeyboardInterrupt  # stop before printing a result

    monkeypatch.setattr(sweeper.sweep, "run_sweep", fake_run_sweep)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config_data(tmp_path)))
    assert cli.main(["run", str(config), *flags]) == 130
    assert (seen["verbose"], seen["progress"]) == expected


@pytest.mark.slow
def test_piped_sweep_prints_lines_not_boxes(tmp_path: Path) -> None:
    """A real sweep through the CLI, stdout piped: the view's plain lines, then the final table."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config_data(tmp_path)))
    done = sweeper("run", str(config), cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    before_summary, _, summary = done.stdout.partition("## Sweep tiny")
    assert "╭" not in done.stdout and "╭" not in done.stderr  # no boxed tables from Tune
    finished = [line for line in before_summary.splitlines() if line.startswith("trial ")]
    assert len(finished) == 3 and all("epoch 2/2  RankMe " in line for line in finished)
    assert {line.split()[2] for line in finished} == {"cov_weight=0", "cov_weight=1", "cov_weight=8"}
    assert before_summary.strip().splitlines()[-1].startswith("tiny: 3/3 trials done (3 ok) | elapsed")
    # A header, a progress block or two (30 s apart), a line per trial and the final progress.
    assert len(before_summary.splitlines()) < 15, before_summary
    assert "RankMe plateau" in summary and "| trial_id |" in summary
    assert "spectrum" not in done.stdout
