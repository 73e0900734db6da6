"""Reading Ray Tune's record of a sweep: the trial table, the final spectra, the histories.

Everything is read from Tune's experiment state on disk (or in the bucket), so it works on a
finished, a running and an interrupted sweep alike. :func:`read_trials` reads that state once
for a whole report. A sweep holds up to two Tune experiments: the search itself (the sweep
directory) and its confirmation trials (``confirm/`` in it, :mod:`sweeper.sweep._confirm`); the
table holds both, told apart by its ``phase`` column.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
from ray.tune import ExperimentAnalysis

from sweeper.config import SweeperConfig
from sweeper.errors import SweeperError, SweepError
from sweeper.names import (
    CONFIRM_PHASE,
    ORACLE_SKIPPED,
    PHASE,
    SEARCH_PHASE,
    SPECTRUM_EMBEDDING,
    is_metric_key,
    trial_status,
)
from sweeper.storage import SweepLocation
from sweeper.sweep._state import as_location, tune_filesystem

_ANALYSIS_LOGGER = "ray.tune.analysis.experiment_analysis"
EXPERIMENT_STATE = "experiment_state-*.json"  # Tune's record of the trials (what Tuner.restore reads)
CONFIRM_DIR = "confirm"  # the confirmation trials' Tune experiment, inside the sweep directory


@dataclass(frozen=True)
class TrialHistory:
    """What Tune recorded of one trial.

    Attributes:
        trial_id: Tune's trial id.
        config: The trial's config (the searched values, and ``seed`` for repeats).
        ray_state: Tune's trial state (``TERMINATED``, ``ERROR``, ``PENDING``, ...).
        last_result: Its last reported result (empty before the first).
        results: Every reported result in order: ``epoch`` and the numeric values.
    """

    trial_id: str
    config: dict[str, Any]
    ray_state: str
    last_result: dict[str, Any]
    results: list[dict[str, Any]]


def read_trials(
    directory: SweepLocation | Path | str, config: SweeperConfig
) -> tuple[pd.DataFrame, dict[str, list[float]]]:
    """The trial table (:func:`trial_table`) and the final spectra (:func:`trial_spectra`) of
    the sweep at ``directory``, from one read of Tune's experiment state."""
    experiments = _experiments(as_location(directory))
    return _table(experiments, config), _spectra(experiments)


def trial_table(directory: SweepLocation | Path | str, config: SweeperConfig) -> pd.DataFrame:
    """One row per trial of the sweep at ``directory`` (a path, a URI or a location):
    ``trial_id``, searched keys, final metrics, ``status``, ``epochs_done``, ``wall_s`` (the
    ``trials.csv`` contract) and ``phase`` (``search``, or ``confirm`` for a confirmation
    trial), sorted by ``trial_id``.

    A metric's final value is its last reported value: a trial that diverged or failed keeps
    the metrics it had.
    """
    return _table(_experiments(as_location(directory)), config)


def trial_spectra(directory: SweepLocation | Path | str) -> dict[str, list[float]]:
    """``{trial_id: singular values}`` of the final embeddings of each trial that reached its
    last epoch (``spectrum/embedding`` of its last Tune result; descending)."""
    return _spectra(_experiments(as_location(directory)))


def trial_histories(directory: SweepLocation | Path | str) -> list[TrialHistory]:
    """Every trial of the Tune experiment at ``directory`` (the search's, or ``confirm/``'s)
    with all its reported results."""
    analysis = _analysis(as_location(directory))
    frames = analysis.trial_dataframes
    return [
        TrialHistory(
            trial_id=trial.trial_id,
            config=dict(trial.config),
            ray_state=trial.status,
            last_result=dict(trial.last_result or {}),
            results=_results_of(frames.get(trial.trial_id)),
        )
        for trial in analysis.trials
    ]


def check_trial_state(directory: SweepLocation | Path | str) -> int:
    """Refuse a sweep whose Ray Tune experiment state is missing or cannot be read as a whole
    (``Tuner.restore`` would log the failure and start the sweep over); return its number of
    trials.

    Raises:
        SweepError: Naming the file and the fix.
    """
    location = as_location(directory)
    if not location.glob(EXPERIMENT_STATE):
        raise SweepError(
            f"{location.uri}/{EXPERIMENT_STATE}: Ray Tune's experiment state is missing, so the sweep cannot be "
            "resumed (nothing was changed): restore the directory from a backup, or if it holds an aborted start, "
            "delete it and start the sweep again"
        )
    return len(_analysis(location).trials)


def trial_errors(directory: SweepLocation | Path | str) -> dict[str, str]:
    """``{trial_id: "Type: message"}`` of each trial (confirmation trials too) that left an
    ``error.txt`` (the last exception line Tune wrote there), in trial id order."""
    trials = [
        (trial, where) for _, analysis, where in _experiments(as_location(directory)) for trial in analysis.trials
    ]
    errors: dict[str, str] = {}
    for trial, where in sorted(trials, key=lambda pair: pair[0].trial_id):
        name = f"{PurePosixPath(trial.path).name}/error.txt"
        if trial.status == "TERMINATED" or not where.is_file(name):
            continue
        lines = [line for line in where.read_bytes(name).decode(errors="replace").splitlines() if line.strip()]
        last = next((line for line in reversed(lines) if not line[0].isspace()), "")
        kind, sep, message = last.partition(": ")
        errors[trial.trial_id] = f"{kind.rsplit('.', 1)[-1]}: {message}" if sep and " " not in kind else last
    return errors


def _experiments(location: SweepLocation) -> list[tuple[str, ExperimentAnalysis, SweepLocation]]:
    """``(phase, analysis, where)`` of the search and, once it started, the confirmation."""
    experiments = [(SEARCH_PHASE, _analysis(location), location)]
    confirm = location.child(CONFIRM_DIR)
    if confirm.glob(EXPERIMENT_STATE):
        experiments.append((CONFIRM_PHASE, _analysis(confirm), confirm))
    return experiments


def _analysis(location: SweepLocation) -> ExperimentAnalysis:
    try:
        with _quiet(_ANALYSIS_LOGGER):  # it warns about every trial without results yet (pending)
            return ExperimentAnalysis(location.path, storage_filesystem=tune_filesystem(location))
    except SweeperError:
        raise
    except Exception as exc:  # a damaged state fails in json, cloudpickle or Tune's own checks
        newest = (location.glob(EXPERIMENT_STATE) or [EXPERIMENT_STATE])[-1]
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SweepError(
            f"{location.uri}/{newest}: Ray Tune's experiment state cannot be read ({type(exc).__name__}: {reason}): "
            "the sweep's record is damaged; restore the directory from a backup, or start the sweep again under "
            "a new --name"
        ) from None


def _table(experiments: list[tuple[str, ExperimentAnalysis, SweepLocation]], config: SweeperConfig) -> pd.DataFrame:
    keys = list(config.search.space)
    rows = []
    for phase, analysis, location in experiments:
        rows += [_row(trial, analysis.trial_dataframes, location, keys, phase) for trial in analysis.trials]
    if any(row[PHASE] == CONFIRM_PHASE for row in rows):
        for row in rows:  # a search trial without a seed of its own ran with the sweep's
            row.setdefault("seed", config.seed)
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values("trial_id", kind="stable").reset_index(drop=True)
    return table


def _row(
    trial: Any, frames: dict[str, pd.DataFrame], location: SweepLocation, keys: list[str], phase: str
) -> dict[str, Any]:
    """One trial's row of the table."""
    last = trial.last_result or {}
    row: dict[str, Any] = {"trial_id": trial.trial_id}
    row |= {key: trial.config.get(key) for key in keys}
    if "seed" in trial.config:
        row["seed"] = trial.config["seed"]
    row |= _final_metrics(frames.get(trial.trial_id))
    # Tune's last state snapshot can predate a trial's error; its error file cannot.
    error_file = trial.status != "TERMINATED" and location.is_file(f"{PurePosixPath(trial.path).name}/error.txt")
    row["status"] = trial_status(trial.status, last, error_file=error_file)
    row["epochs_done"] = int(last.get("epoch", 0) or 0)
    row["wall_s"] = round(float(last.get("time_total_s", math.nan)), 2)
    if last.get(ORACLE_SKIPPED):
        row[ORACLE_SKIPPED] = str(last[ORACLE_SKIPPED])
    row[PHASE] = phase
    return row


def _final_metrics(history: pd.DataFrame | None) -> dict[str, float]:
    """Each metric column's last numeric value."""
    final: dict[str, float] = {}
    if history is None or not len(history):
        return final
    for column in history.columns:
        if is_metric_key(column):
            values = pd.to_numeric(history[column], errors="coerce").dropna()
            if len(values):
                final[column] = float(values.iloc[-1])
    return final


def _spectra(experiments: list[tuple[str, ExperimentAnalysis, SweepLocation]]) -> dict[str, list[float]]:
    spectra: dict[str, list[float]] = {}
    for trial in (trial for _, analysis, _ in experiments for trial in analysis.trials):
        values = (trial.last_result or {}).get(SPECTRUM_EMBEDDING)
        if isinstance(values, list | tuple) and values:
            spectra[trial.trial_id] = [float(v) for v in values]
    return spectra


def _results_of(history: pd.DataFrame | None) -> list[dict[str, Any]]:
    """A trial's results as dicts of ``epoch`` and its numeric metrics, missing ones left out."""
    if history is None or not len(history) or "epoch" not in history.columns:
        return []
    columns = ["epoch", *(c for c in history.columns if is_metric_key(c))]
    results = []
    for row in history[columns].to_dict("records"):
        values = {key: float(value) for key, value in row.items() if _is_finite_number(value)}
        if "epoch" in values:
            results.append({**values, "epoch": int(values["epoch"])})
    return results


def _is_finite_number(value: Any) -> bool:
    try:
        return not isinstance(value, bool | str) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
