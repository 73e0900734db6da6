"""Benchmark: orchestration overhead of ``sweeper run`` against a plain Python loop over the engine.

The same K trials of the quickstart (VICReg's covariance weight on digits: the first K grid
values, same seed, 1 CPU and 1 torch thread each, the same epochs, label-free evaluation every
5 epochs and the oracle probes at the end) run twice, one trial at a time:

* **sweeper**: :func:`sweeper.sweep.run_sweep` on the config (what ``sweeper run`` calls): an
  embedded Ray, one Ray Tune trial process each, checkpoints at every evaluation, every result
  streamed to MLflow (sqlite), then ``trials.csv`` and the report;
* **plain loop**: ``for value in grid: Trainer(config with value).epochs()`` in this process,
  no Ray, no MLflow, no checkpoints.

Both sides are timed end to end (the sweeper side includes starting and stopping Ray). The
trials must agree (same seed, same thread count): the largest RankMe difference is printed.

Usage::

    python bench/overhead.py                    # the quickstart's K = 6 trials, 40 epochs (~30 s each)
    python bench/overhead.py --trials 2 --epochs 10
"""

from __future__ import annotations

import argparse
import time

from _common import (
    add_quickstart_arguments,
    bench_config,
    fmt,
    machine_line,
    markdown_table,
    plain_trial,
    searched,
    timed_sweep,
    workdir,
)


def measure(*, trials: int, epochs: int, directory_name: str | None = None) -> dict[str, object]:
    """Wall times of both sides, per-trial walls and the largest RankMe disagreement."""
    with workdir(directory_name) as directory:
        config = bench_config(
            directory,
            f"bench-overhead-{time.strftime('%Y%m%d-%H%M%S')}",
            overrides={
                "train.epochs": epochs,
                "search.max_concurrent": 1,
                "search.resources": {"cpu": 1, "gpu": 0},
            },
        )
        key, values = searched(config)
        config = config.with_overrides({"search.space": {key: {"values": values[:trials]}}})
        started = time.perf_counter()
        plain = [plain_trial(config, key, value, threads=1) for value in values[:trials]]
        plain_s = time.perf_counter() - started
        result, sweep_s = timed_sweep(config)
    table = result.table.sort_values(key).reset_index(drop=True)
    by_value = {row[key]: row for _, row in table.iterrows()}
    diffs = [abs(by_value[t.value]["rankme/embedding"] - t.metrics["rankme/embedding"]) for t in plain]
    return {
        "key": key,
        "plain": plain,
        "plain_s": plain_s,
        "sweep_s": sweep_s,
        "sweep_trials": table,
        "ratio": sweep_s / plain_s,
        "max_rankme_diff": max(diffs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_quickstart_arguments(parser, trials=6, epochs=40, workdir=True)
    args = parser.parse_args(argv)
    print(f"{args.trials} quickstart trials × {args.epochs} epochs, one at a time, 1 thread; {machine_line()}\n")
    out = measure(trials=args.trials, epochs=args.epochs, directory_name=args.workdir)
    key = out["key"]
    sweep_rows = {row[key]: row for _, row in out["sweep_trials"].iterrows()}
    rows = [
        [f"{key.rsplit('.', 1)[-1]} = {t.value:g}", t.status, fmt(t.wall_s), sweep_rows[t.value]["status"]]
        + [fmt(sweep_rows[t.value]["wall_s"]), fmt(t.metrics["rankme/embedding"])]
        for t in out["plain"]
    ]
    print(
        markdown_table(
            ["trial", "plain status", "plain wall (s)", "sweeper status", "sweeper trial (s)", "RankMe"], rows
        )
    )
    print()
    print(
        markdown_table(
            ["side", "wall time (s)"],
            [
                ["plain loop over sweeper.engine.Trainer", fmt(out["plain_s"], 1)],
                ["sweeper run (run_sweep: Ray + checkpoints + MLflow + report)", fmt(out["sweep_s"], 1)],
                ["ratio sweeper / plain (goal ≤ 1.05×)", f"{out['ratio']:.3f}×"],
            ],
        )
    )
    print(f"\nlargest |RankMe(sweeper) − RankMe(plain)| over the trials: {out['max_rankme_diff']:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
