"""A sweep's report, published: ``trials.csv`` and the report files in the sweep directory
(uploaded next to the trials for a URI sweep), and on the MLflow parent run as artifacts and
tags naming what each selection rule picked."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from sweeper import report
from sweeper.config import SweeperConfig
from sweeper.errors import SweepError, TrackingError
from sweeper.storage import SweepLocation, write_atomic
from sweeper.sweep._results import read_trials
from sweeper.sweep._state import as_location, load_sweep_config, sweep_location, tune_filesystem
from sweeper.tracking import SweepTracker, check_tracking_uri

TRIALS_FILE = "trials.csv"
SELECTED_BY_TAG = "sweeper.selected_by"  # on a child run: the rules that picked it
PICK_TAG_PREFIX = "sweeper.pick."  # sweeper.pick.<rule> on the parent run: the trials it picked
HEADLINE_TAG = "sweeper.pick"  # the pick of selection.rule: the trials the sweep recommends
HEADLINE_RULE_TAG = "sweeper.pick_rule"
ORACLE_SKIPPED_TAG = "sweeper.oracle_skipped"  # on the parent run: why no labelled probe ran


def sweep_report(directory: SweepLocation | Path | str, config: SweeperConfig) -> report.SweepReport:
    """The sweep at ``directory`` as it stands (finished or not): trial table, spectra and
    every rule's pick, read from Tune's state once; the report's directory is the sweep's
    local one."""
    location = as_location(directory)
    table, spectra = read_trials(location, config)
    return report.SweepReport.build(config, table, spectra=spectra, directory=location.local_path)


def publish_report(
    sweep: report.SweepReport, tracker: SweepTracker | None = None, *, location: SweepLocation | None = None
) -> list[Path]:
    """Write ``trials.csv`` and the report into the sweep directory (and upload them to the
    sweep ``location`` when it is a URI; default: the config's); with a ``tracker`` whose
    parent run is set, log them to the parent run as artifacts (``report/``), tag the parent
    with each rule's pick (``sweeper.pick.<rule>``) and the headline pick of
    ``selection.rule`` (``sweeper.pick``, ``sweeper.pick_rule``), and the picked children with
    the rules that chose them (``sweeper.selected_by``), replacing the tags of an earlier
    selection.

    Returns the files written.
    """
    if sweep.directory is None:
        raise ValueError("publish_report needs a report with its sweep directory")
    location = location if location is not None else sweep_location(sweep.config)
    sweep.directory.mkdir(parents=True, exist_ok=True)  # a URI sweep's local copy starts empty
    trials = write_atomic(sweep.directory / TRIALS_FILE, sweep.table.to_csv(index=False))
    files = [trials, *report.write_report(sweep)]
    if not location.is_local:  # the local files are the report's copy; the sweep keeps its own
        location.upload(files, root=sweep.directory)
    if tracker is not None and tracker.parent_id is not None:
        _log_selection(sweep, tracker, files)
    return files


def _log_selection(sweep: report.SweepReport, tracker: SweepTracker, files: list[Path]) -> None:
    tracker.log_parent_artifacts(files)
    rule, headline = sweep.headline
    tags = {f"{PICK_TAG_PREFIX}{name}": ",".join(pick.trial_ids) for name, pick in sweep.picks.items()}
    tags[HEADLINE_RULE_TAG] = rule
    if sweep.oracle_skipped:
        tags[ORACLE_SKIPPED_TAG] = sweep.oracle_skipped
    if headline is not None:  # else an earlier headline tag is deleted: nothing is recommended
        tags[HEADLINE_TAG] = ",".join(headline.trial_ids)
    tracker.set_parent_tags(tags, replace_prefix=HEADLINE_TAG)
    chosen = report.rules_by_trial(sweep.picks)
    tracker.tag_children(SELECTED_BY_TAG, {trial: ",".join(rules) for trial, rules in chosen.items()})


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_sweeps` did.

    Attributes:
        reports: One report per sweep, in the order given.
        files: ``{sweep directory: files written there}``.
        tracking: ``{sweep directory: MLflow parent run id, or why nothing was logged}``.
        combined: The files of the combined report (empty when none was asked for).
    """

    reports: list[report.SweepReport]
    files: dict[Path, list[Path]]
    tracking: dict[Path, str]
    combined: list[Path]


def compare_sweeps(
    sweeps: list[str | Path],
    *,
    storage_path: str | Path = "./sweeps",
    out: Path | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
) -> Comparison:
    """The selection report of each sweep, and a combined one of all of them.

    Each sweep (a directory, or a name under ``storage_path``) is read from Ray Tune's state
    on disk, finished or not, and gets ``trials.csv`` and its report rewritten in its
    directory. With ``track``, the report is also logged to the sweep's MLflow parent run and
    its children are re-tagged (see :func:`publish_report`) when the tracking store
    (``tracking_uri``, else the sweep's ``tracking.uri``) is reachable and holds that parent
    run; nothing is created in the store otherwise. With ``out``, the combined report
    (:func:`sweeper.report.write_comparison`) is written there.

    Raises:
        SweepError: If a sweep cannot be found or has no trial state yet, or ``out`` cannot be
            a directory (checked before any file is written).
    """
    loaded: list[tuple[report.SweepReport, SweepLocation]] = []
    for name in sweeps:
        config = load_sweep_config(name, storage_path=storage_path)
        location = sweep_location(config)
        if not tune.Tuner.can_restore(location.path, storage_filesystem=tune_filesystem(location)):
            raise SweepError(f"sweep {config.name!r} at {location.uri} has no trial state yet: nothing to compare")
        loaded.append((sweep_report(location, config), location))
    if out is not None:  # before any sweep's files are rewritten
        _make_out_directory(out)
    files: dict[Path, list[Path]] = {}
    tracking: dict[Path, str] = {}
    for sweep, location in loaded:
        assert sweep.directory is not None  # sweep_report sets it
        tracker, status = _existing_tracker(sweep.config, tracking_uri) if track else (None, "not asked")
        files[sweep.directory] = publish_report(sweep, tracker, location=location)
        tracking[sweep.directory] = status
    reports = [sweep for sweep, _ in loaded]
    combined = report.write_comparison(reports, out) if out is not None else []
    return Comparison(reports, files, tracking, combined)


def _make_out_directory(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SweepError(f"--out {out}: is a file, not a directory: give a directory (it is created)") from None
    except OSError as exc:
        raise SweepError(f"--out {out}: cannot be created ({exc.strerror or exc}): give a writable directory") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise SweepError(f"--out {out}: is not writable: give a writable directory")


def _existing_tracker(config: SweeperConfig, uri: str | None) -> tuple[SweepTracker | None, str]:
    """A tracker attached to the sweep's existing parent run, or None and the reason."""
    uri = uri or config.tracking.uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).expanduser().is_file():
        return None, f"not logged: no tracking store at {uri} (give --tracking-uri)"
    try:
        check_tracking_uri(uri)
        tracker = SweepTracker(uri=uri, experiment=config.experiment_name, sweep=config.name)
        tracker.parent_id = tracker.find_parent()
    except TrackingError as exc:
        return None, f"not logged: {exc}"
    except Exception as exc:  # the store answered, but not as MLflow: say so, do not fail
        return None, f"not logged: {uri}: {type(exc).__name__}: {exc}"
    if tracker.parent_id is None:
        where = f"experiment {config.experiment_name!r}"
        return None, f"not logged: {uri} has no parent run {config.name!r} in {where}"
    return tracker, f"logged to parent run {tracker.parent_id} ({uri})"
