"""Benchmark: parallel efficiency of a sweep, 2 concurrent trials on 2 cores vs one at a time.

The same K quickstart trials (VICReg's covariance weight on digits, 1 CPU and 1 torch thread
each, same seed and epochs) run as two sweeps with :func:`sweeper.sweep.run_sweep`: with
``search.max_concurrent: 1`` and with ``search.max_concurrent: 2``. Throughput is trials per
second of the whole ``run_sweep`` (Ray start to report), and, to separate Ray's fixed start-up
from the trials, trial-epochs per second of trial time (the sum of the trials' epochs over the
time from the first trial's start to the last trial's end, from Tune's results).

Usage::

    python bench/parallel.py                    # the quickstart: K = 6 trials of 20 epochs
    python bench/parallel.py --trials 2 --epochs 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import (
    add_quickstart_arguments,
    bench_config,
    fmt,
    machine_line,
    markdown_table,
    searched,
    timed_sweep,
    workdir,
)

from sweeper.config import SweeperConfig


def _trial_span(directory: Path) -> float:
    """Seconds from the first trial's start to the last trial's end (Tune's timestamps, 1 s
    resolution)."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(directory)).trials
    starts = [t.last_result["timestamp"] - t.last_result["time_total_s"] for t in trials if t.last_result]
    ends = [t.last_result["timestamp"] for t in trials if t.last_result]
    return max(ends) - min(starts)


def _sweep(config: SweeperConfig, concurrent: int) -> dict[str, float]:
    config = config.with_overrides({"search.max_concurrent": concurrent, "name": f"{config.name}-c{concurrent}"})
    result, wall = timed_sweep(config)
    table = result.table
    span = _trial_span(result.directory)
    return {
        "wall_s": wall,
        "trials": len(table),
        "ok": int((table["status"] == "ok").sum()),
        "epochs": float(table["epochs_done"].sum()),
        "span_s": span,
        "mean_trial_s": float(table["wall_s"].mean()),
    }


def measure(*, trials: int, epochs: int, directory_name: str | None = None) -> dict[str, dict[str, float]]:
    """Both sweeps and the throughput ratios (concurrent / sequential)."""
    with workdir(directory_name) as directory:
        config = bench_config(
            directory,
            f"bench-parallel-{time.strftime('%Y%m%d-%H%M%S')}",
            overrides={"train.epochs": epochs, "search.resources": {"cpu": 1, "gpu": 0}},
        )
        key, values = searched(config)
        config = config.with_overrides({"search.space": {key: {"values": values[:trials]}}})
        sequential, concurrent = _sweep(config, 1), _sweep(config, 2)
    ratio = {
        "sweep": sequential["wall_s"] / concurrent["wall_s"],
        "trials": sequential["span_s"] / concurrent["span_s"],
    }
    return {"sequential": sequential, "concurrent": concurrent, "ratio": ratio}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_quickstart_arguments(parser, trials=6, epochs=20, workdir=True)
    args = parser.parse_args(argv)
    print(f"{args.trials} quickstart trials × {args.epochs} epochs, 1 CPU / 1 thread per trial; {machine_line()}\n")
    out = measure(trials=args.trials, epochs=args.epochs, directory_name=args.workdir)
    rows = []
    for label, side in (("one at a time", "sequential"), ("2 concurrent", "concurrent")):
        run = out[side]
        rows.append(
            [
                label,
                f"{run['ok']}/{run['trials']}",
                fmt(run["wall_s"], 1),
                f"{run['trials'] / run['wall_s'] * 60:.2f}",
                fmt(run["span_s"], 1),
                f"{run['epochs'] / run['span_s']:.2f}",
                fmt(run["mean_trial_s"], 1),
            ]
        )
    ratio = out["ratio"]
    rows.append(["ratio (goal ≥ 1.7×)", "", "", f"{ratio['sweep']:.2f}×", "", f"{ratio['trials']:.2f}×", ""])
    headers = [
        "sweep",
        "ok",
        "run_sweep wall (s)",
        "trials/min",
        "trial span (s)",
        "trial-epochs/s",
        "mean trial wall (s)",
    ]
    print(markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
