"""A sweep: search space -> Ray Tune ``Tuner`` -> trial table -> selection -> report.

    from sweeper.sweep import run_sweep
    result = run_sweep(config)           # or resume=True to continue (and grow) a sweep
    print(result.report.headline)        # the pick of selection.rule

:func:`run_sweep` checks everything before writing anything, runs the trials on Ray (embedded,
or an existing cluster), streams them into MLflow, and writes ``trials.csv`` and the report to
the sweep directory ``<storage_path>/<name>/`` and the MLflow parent run. The rest reads a sweep
that exists: :func:`trial_table`, :func:`sweep_report`, :func:`compare_sweeps`, ...
"""

from __future__ import annotations

from sweeper.errors import SweepError
from sweeper.sweep._callback import TrackingCallback
from sweeper.sweep._check import (
    ComponentCheck,
    check_components,
    check_everywhere,
    check_on_cluster,
    component_listing,
    plugin_runtime_env,
)
from sweeper.sweep._publish import Comparison, compare_sweeps, publish_report, sweep_report
from sweeper.sweep._results import read_trials, trial_spectra, trial_table
from sweeper.sweep._run import SweepInterrupted, SweepResult, preflight, run_sweep
from sweeper.sweep._state import load_sweep_config, sweep_location

__all__ = [
    "Comparison",
    "ComponentCheck",
    "SweepError",
    "SweepInterrupted",
    "SweepResult",
    "check_components",
    "check_everywhere",
    "check_on_cluster",
    "compare_sweeps",
    "component_listing",
    "load_sweep_config",
    "plugin_runtime_env",
    "preflight",
    "publish_report",
    "read_trials",
    "run_sweep",
    "sweep_location",
    "sweep_report",
    "trial_spectra",
    "trial_table",
]

# Sweeps started before this package existed pickled their callback (in Tune's tuner.pkl)
# under this name; Tuner.restore must still find it.
_TrackingCallback = TrackingCallback
