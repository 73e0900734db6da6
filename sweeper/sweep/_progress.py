"""The console view of a running sweep: a line per trial and the sweep's progress.

A thin Ray Tune callback, like Tune's own reporters: each hook notes what Tune says of a trial
and the view redraws from it. On a terminal it is one table redrawn in place
(:class:`rich.live.Live`, left on screen at the end); when the output is a file or a pipe (CI,
log files, ``sweeper submit`` logs) it prints plain lines instead: the sweep's progress and its
running trials every ``interval_s`` seconds, and one line per finished trial. A trial's line
shows its id, its searched hyperparameters, epoch/total, the latest RankMe
(``rankme/embedding``) it reported and its status (:func:`sweeper.names.trial_status`); only
scalars reach the console, never a list such as the spectrum.

The remaining time is an estimate (:func:`remaining_s`): the sweep's pace so far (the trials'
training time over their epochs) times the epochs still to run (what the running trials have
left, and every trial not started), over the number of trials that ran at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ray import tune
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sweeper.names import FAILED, FINISHED_STATUSES, OK, PENDING, RANKME_EMBEDDING, RUNNING, trial_status
from sweeper.sweep._callback import trial_params

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialLine:
    """What the view shows of one trial.

    Attributes:
        trial_id: Tune's trial id (``trials.csv``'s ``trial_id``).
        params: The trial's searched hyperparameters (and, for repeats, its seed).
        epoch: The last epoch it reported (0 before its first).
        epochs: The epochs it runs in all (``train.epochs``).
        rankme: The latest ``rankme/embedding`` it reported, if any.
        status: Its sweeper status (``running``, ``ok``, ``diverged``, ...).
        time_s: Its training time so far (Tune's ``time_total_s``), if it reported.
    """

    trial_id: str
    params: Mapping[str, Any]
    epoch: int
    epochs: int
    rankme: float | None
    status: str
    time_s: float | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


@dataclass(frozen=True)
class Progress:
    """The sweep as a whole: trials done/running/not started, elapsed and remaining time."""

    total: int
    finished: dict[str, int]  # status -> count, finished trials only
    running: int
    elapsed_s: float
    remaining_s: float | None
    concurrency: int

    @property
    def done(self) -> int:
        return sum(self.finished.values())

    @property
    def pending(self) -> int:
        return max(self.total - self.done - self.running, 0)


def trial_line(
    trial: Any, *, searched: Sequence[str], epochs: int, rankme: float | None, ray_state: str | None = None
) -> TrialLine:
    """The :class:`TrialLine` of a Tune ``trial`` (its ``trial_id``, ``config``, ``status`` and
    ``last_result``); ``ray_state`` overrides ``trial.status`` (a trial ending right now)."""
    result = trial.last_result or {}
    config = trial.config or {}
    return TrialLine(
        trial_id=str(trial.trial_id),
        params=trial_params(config, searched),
        epoch=int(_scalar(result.get("epoch")) or 0),
        epochs=int(config.get("train.epochs", epochs)),
        rankme=rankme if rankme is not None else _scalar(result.get(RANKME_EMBEDDING)),
        status=trial_status(ray_state or str(trial.status), result),
        time_s=_scalar(result.get("time_total_s")),
    )


def remaining_s(lines: Iterable[TrialLine], *, total: int, epochs: int, concurrency: int) -> float | None:
    """Seconds the sweep has left: seconds per epoch so far (all trials' training time over their
    epochs) x the epochs left (running trials' rest, ``epochs`` for each trial not started) /
    the trials at once (``concurrency``, at most the trials left). None before any epoch."""
    lines = list(lines)
    timed = [line for line in lines if line.time_s is not None and line.epoch > 0]
    epochs_run = sum(line.epoch for line in timed)
    if not epochs_run:
        return None
    pace = sum(line.time_s or 0.0 for line in timed) / epochs_run
    unfinished = [line for line in lines if not line.finished]
    not_started = max(total - len(lines), 0)
    epochs_left = sum(max(line.epochs - line.epoch, 0) for line in unfinished) + not_started * epochs
    at_once = max(min(concurrency, len(unfinished) + not_started), 1)
    return pace * epochs_left / at_once


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_progress(progress: Progress) -> str:
    """``3/6 trials done (2 ok, 1 diverged), 2 running, 1 not started | elapsed 1m02s | ~1m40s left
    (pace so far, 2 at a time)``."""
    counts = ", ".join(f"{n} {status}" for status, n in sorted(progress.finished.items()))
    parts = [f"{progress.done}/{progress.total} trials done" + (f" ({counts})" if counts else "")]
    parts += [f"{progress.running} running"] if progress.running else []
    parts += [f"{progress.pending} not started"] if progress.pending else []
    left = "remaining: unknown until the first epoch"
    if progress.remaining_s is not None:
        left = f"~{format_duration(progress.remaining_s)} left (pace so far, {progress.concurrency} at a time)"
    if progress.done == progress.total:
        left = "finished"
    return " | ".join([", ".join(parts), f"elapsed {format_duration(progress.elapsed_s)}", left])


def format_line(line: TrialLine) -> str:
    """``trial 1a2b_00001  cov_weight=0.01  epoch 20/20  RankMe 12.34  ok``."""
    labels = _labels(line.params)
    params = "  ".join(f"{labels[key]}={_value(value)}" for key, value in line.params.items())
    rankme = "-" if line.rankme is None else f"{line.rankme:.2f}"
    return f"trial {line.trial_id}  {params}  epoch {line.epoch}/{line.epochs}  RankMe {rankme}  {line.status}"


def progress_table(lines: Sequence[TrialLine], progress: Progress, *, title: str, max_rows: int | None = None) -> Group:
    """The live view: the sweep's progress above a table of its trials; beyond ``max_rows``
    trials, the unfinished ones and the latest finished ones."""
    shown = _visible(lines, max_rows)
    keys = list(dict.fromkeys(key for line in lines for key in line.params))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("trial")
    for label in _labels(keys).values():
        table.add_column(label, justify="right")
    table.add_column("epoch", justify="right")
    table.add_column("RankMe", justify="right")
    table.add_column("status")
    for line in shown:
        rankme = "-" if line.rankme is None else f"{line.rankme:.2f}"
        status = Text(line.status, style=_STYLES.get(line.status, ""))
        params = [_value(line.params[key]) if key in line.params else "" for key in keys]
        table.add_row(line.trial_id, *params, f"{line.epoch}/{line.epochs}", rankme, status)
    if len(shown) < len(lines):
        table.caption = f"{len(lines) - len(shown)} earlier finished trials not shown"
    return Group(Text(f"{title}: {format_progress(progress)}", style="bold"), table)


def _visible(lines: Sequence[TrialLine], max_rows: int | None) -> list[TrialLine]:
    if max_rows is None or len(lines) <= max_rows:
        return list(lines)
    unfinished = [line for line in lines if not line.finished][:max_rows]
    finished = [line for line in lines if line.finished][::-1][: max_rows - len(unfinished)]
    keep = {id(line) for line in unfinished + finished}
    return [line for line in lines if id(line) in keep]


@contextlib.contextmanager
def tune_console(*, verbose: int) -> Iterator[None]:
    """Tune's own console output at ``verbose`` while the block runs (a ``Tuner.fit``).

    At 0, Tune's default output engine still prints its experiment box and result paths (Ray
    2.60's ``experiment_started`` ignores the verbosity); its legacy engine, chosen by
    ``RAY_AIR_NEW_OUTPUT=0``, prints nothing at 0. Above 0, Tune's default engine is kept.
    """
    if verbose > 0:
        yield
        return
    before = os.environ.get(_NEW_OUTPUT)
    os.environ[_NEW_OUTPUT] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_NEW_OUTPUT, None)
        else:
            os.environ[_NEW_OUTPUT] = before


_NEW_OUTPUT = "RAY_AIR_NEW_OUTPUT"
_STYLES = {OK: "green", RUNNING: "cyan", PENDING: "dim", FAILED: "red"}


class ProgressView(tune.Callback):
    """The sweep's console view (see the module docstring); :meth:`close` ends it.

    Args:
        name: The sweep's name (the view's title).
        searched: The searched keys (a trial's shown hyperparameters).
        epochs: ``train.epochs``.
        max_concurrent: ``search.max_concurrent`` (the trials at once until more are seen).
        console: Where to draw (default: stdout); a terminal gets the live view.
        interval_s: Seconds between the plain progress lines.
        refresh_s: Seconds between redraws of the live view.
        clock: Seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        *,
        name: str,
        searched: Sequence[str],
        epochs: int,
        max_concurrent: int | None = None,
        console: Console | None = None,
        interval_s: float = 30.0,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.searched, self.epochs = name, list(searched), epochs
        self.console = console or Console()
        self.interval_s, self.refresh_s, self.clock = interval_s, refresh_s, clock
        self._total = 0
        self._peak_running = 0
        self._max_concurrent = max_concurrent
        self._trials: list[Any] = []
        self._rankme: dict[str, float] = {}
        self._ended: dict[str, str] = {}  # trial_id -> Tune state, while Tune's trial lags behind
        self._started = self._drawn = clock()
        self._open = False  # between setup and close
        self._live: Live | None = None

    # ------------------------------------------------------------------ Tune's hooks
    def setup(self, total_num_samples: int | None = None, **info: Any) -> None:
        self._total = total_num_samples or 0
        self._started = self._drawn = self.clock()
        self._open = True
        self._safely(self._start)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._trials = trials
        self._redraw()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trials = trials
        self._redraw(force=self._live is not None)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        rankme = _scalar(result.get(RANKME_EMBEDDING))
        if rankme is not None:
            self._rankme[str(trial.trial_id)] = rankme
        self._trials = trials
        self._redraw()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial_ended(trials, trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial_ended(trials, trial, "ERROR")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._trials = trials
        self.close()

    # ------------------------------------------------------------------ drawing
    def lines(self) -> list[TrialLine]:
        """A line per trial Tune has created, in its order."""
        return [self._line(trial) for trial in self._trials]

    def progress(self, lines: Sequence[TrialLine]) -> Progress:
        running = sum(line.status == RUNNING for line in lines)
        self._peak_running = max(self._peak_running, running)
        concurrency = self._peak_running or self._max_concurrent or 1
        finished: dict[str, int] = {}
        for line in lines:
            if line.finished:
                finished[line.status] = finished.get(line.status, 0) + 1
        total = max(self._total, len(lines))
        return Progress(
            total=total,
            finished=finished,
            running=running,
            elapsed_s=self.clock() - self._started,
            remaining_s=remaining_s(lines, total=total, epochs=self.epochs, concurrency=concurrency),
            concurrency=concurrency,
        )

    def close(self) -> None:
        """Draw the final state and end the view; nothing once closed or before Tune set it up.
        Never raises: it runs while a failed sweep's error is on its way up."""
        if not self._open:
            return
        self._safely(self._draw_final)
        self._open = False
        self._stop_live()

    def _draw_final(self) -> None:
        lines = self.lines()
        if self._live is None:
            self._print(f"{self.name}: {format_progress(self.progress(lines))}")
        else:
            self._live.update(self._table(lines, self.progress(lines)), refresh=True)

    def _stop_live(self) -> None:
        """The terminal (and sys.stdout, which Live redirects) back to the sweep."""
        if self._live is not None:
            with contextlib.suppress(Exception):
                self._live.stop()
            self._live = None

    def _table(self, lines: Sequence[TrialLine], progress: Progress) -> Group:
        # The title, the table's head and caption take 5 lines; what overflows the screen is cut.
        return progress_table(lines, progress, title=self.name, max_rows=max(self.console.height - 5, 3))

    def _trial_ended(self, trials: list, trial: Any, ray_state: str) -> None:
        self._trials = trials
        self._ended[str(trial.trial_id)] = ray_state
        if self._live is not None:
            self._redraw(force=True)
        elif self._open:
            self._safely(lambda: self._print(format_line(self._line(trial))))

    def _start(self) -> None:
        if self.console.is_terminal or self.console.is_jupyter:
            # Redrawn from the hooks (no refresh thread reading Tune's trials while Tune updates them).
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.start()
            self._draw()
        else:
            self._print(f"{self.name}: {self._total} trials; progress every {format_duration(self.interval_s)}")

    def _line(self, trial: Any) -> TrialLine:
        trial_id = str(trial.trial_id)
        return trial_line(
            trial,
            searched=self.searched,
            epochs=self.epochs,
            rankme=self._rankme.get(trial_id),
            ray_state=self._ended.get(trial_id),
        )

    def _redraw(self, *, force: bool = False) -> None:
        now = self.clock()
        every = self.refresh_s if self._live is not None else self.interval_s
        if self._open and (force or now - self._drawn >= every):
            self._drawn = now
            self._safely(self._draw)

    def _draw(self) -> None:
        lines = self.lines()
        progress = self.progress(lines)
        if self._live is not None:
            self._live.update(self._table(lines, progress), refresh=True)
            return
        self._print(f"{self.name}: {format_progress(progress)}")
        for line in lines:
            if line.status == RUNNING:
                self._print("  " + format_line(line))

    def _print(self, text: str) -> None:
        print(text, file=self.console.file, flush=True)

    def _safely(self, draw: Callable[[], None]) -> None:
        """A view that cannot draw ends with a warning; the sweep goes on."""
        try:
            draw()
        except Exception as exc:
            _log.warning("the progress view stopped (%s: %s); the sweep goes on", type(exc).__name__, exc)
            self._open = False
            self._stop_live()


def _scalar(value: Any) -> float | None:
    """``value`` as a float when it is a number (NaN too); None for lists, strings, booleans, None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _labels(keys: Iterable[str]) -> dict[str, str]:
    """Short column names: ``method.params.cov_weight`` -> ``cov_weight``, unless two keys end
    alike (``train.lr`` and ``method.params.lr`` keep their full names)."""
    keys = list(keys)
    ends = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: end if ends.count(end) == 1 else key for key, end in zip(keys, ends, strict=True)}


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
