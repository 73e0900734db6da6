"""Confirmation of the top trials (``search.confirm``) measured: how often the headline pick
changes, the extra trial-epochs it costs, and the pick's gap to the oracle before and after.

On the quickstart (run first in the workdir when missing) and on any finished sweeps given, each
copied into the workdir first so the original stays as it is. Each is confirmed as ``sweeper
confirm`` does: the ``--top-k`` configurations of its ``selection.rule`` trained again with
``--seeds`` new seeds each (defaults 2 and 2, the issue's, fixed before this was first run).

Both gaps are read on the confirmed table: a configuration's accuracy is its mean over all its
seeds (search and confirmation), the oracle is the best such mean, so the pick before and the
pick after are judged by the same yardstick, the better-estimated one.

Usage::

    python bench/confirm.py --workdir runs/confirm --quickstart
    python bench/confirm.py --workdir runs/confirm runs/selection/sweeps/selection-fashion-mnist-vicreg-cov
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import pandas as pd
from _common import QUICKSTART, bench_config, machine_line, markdown_table, workdir

from sweeper.names import CONFIRM_PHASE, OK, PHASE
from sweeper.report import SweepReport
from sweeper.selection import Pick


def confirmed_accuracy(report: SweepReport, metric: str) -> pd.Series:
    """Each configuration's seed-mean ``metric`` over the eligible trials of the whole table,
    indexed by its searched values."""
    keys = list(report.config.search.space)
    eligible = report.table[report.table["status"] == OK]
    return eligible.groupby(keys, dropna=False)[metric].mean()


def gap(accuracy: pd.Series, pick: Pick | None, keys: list[str]) -> float:
    """Percentage points between the picked configuration and the best one."""
    if pick is None:
        return float("nan")
    where = tuple(pick.params[key] for key in keys)
    value = accuracy.loc[where if len(keys) > 1 else where[0]]
    return 100.0 * float(value - accuracy.max())


def confirm(directory: Path, args: argparse.Namespace, tracking_uri: str) -> list[object]:
    """Confirm the sweep at ``directory``; its row of the table."""
    from sweeper.sweep import load_sweep_config, run_sweep

    config = load_sweep_config(directory).with_overrides(
        {"search.confirm": {"top_k": args.top_k, "seeds": args.seeds}, "tracking.uri": tracking_uri}
    )
    began = time.perf_counter()
    result = run_sweep(config, resume=True, progress=not args.quiet)
    elapsed = time.perf_counter() - began
    after = result.report
    before = after.before_confirmation
    if before is None:
        raise SystemExit(f"{directory}: no confirmation trial finished (no trial ok?)")
    keys = list(config.search.space)
    (rule, old), (_, new) = before.headline, after.headline
    confirm_rows = after.table[after.table[PHASE] == CONFIRM_PHASE]
    search_epochs, extra = int(before.table["epochs_done"].sum()), int(confirm_rows["epochs_done"].sum())
    cells: list[object] = [
        config.name,
        rule,
        _values(old),
        _values(new),
        "no" if old is not None and new is not None and old.params == new.params else "yes",
        f"{search_epochs} + {extra} (+{100 * extra / max(search_epochs, 1):.0f} %)",
    ]
    for metric in after.oracle_metrics[:2]:
        accuracy = confirmed_accuracy(after, metric)
        cells.append(f"{gap(accuracy, old, keys):+.1f} → {gap(accuracy, new, keys):+.1f}")
    cells.append(f"{elapsed:.0f} s")
    print(f"{config.name}: confirmed in {elapsed:.0f} s ({len(confirm_rows)} trials)", flush=True)
    return cells


def _values(pick: Pick | None) -> str:
    if pick is None:
        return "none"
    return ", ".join(
        f"{key.rsplit('.', 1)[-1]}={value:g}" if isinstance(value, float) else f"{key.rsplit('.', 1)[-1]}={value}"
        for key, value in pick.params.items()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="*", type=Path, help="finished sweep directories (copied, not changed)")
    parser.add_argument("--quickstart", action="store_true", help="the quickstart sweep too (run when missing)")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--quiet", action="store_true", help="no progress view")
    parser.add_argument("--workdir", help="keep the sweeps and the MLflow store here (default: temporary)")
    args = parser.parse_args()
    if not args.sweeps and not args.quickstart:
        parser.error("give finished sweep directories, --quickstart, or both")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from sweeper.sweep import run_sweep, sweep_location

    with workdir(args.workdir) as directory:
        tracking_uri = f"sqlite:///{directory / 'mlflow.db'}"
        targets = []
        if args.quickstart:
            config = bench_config(directory, "confirm-quickstart", base=QUICKSTART)
            location = sweep_location(config)
            if not location.exists():
                run_sweep(config, progress=not args.quiet)
            targets.append(location.local_path)
        for source in args.sweeps:
            copy = directory / "sweeps" / source.resolve().name
            if not copy.exists():
                shutil.copytree(source, copy)
            targets.append(copy)
        rows = [confirm(target, args, tracking_uri) for target in targets]
        print(f"\n{machine_line()}")
        print(f"top_k={args.top_k}, seeds={args.seeds}; gaps in points, both read on the confirmed table\n")
        headers = ["sweep", "rule", "pick before", "pick after", "changed", "trial-epochs: search + confirmation"]
        headers += ["linear-probe gap before → after", "k-NN gap before → after", "confirmation wall time"]
        print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
