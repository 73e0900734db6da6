"""Benchmark: rank-aware early stopping (ASHA on RankMe + collapse abort) vs the full grid.

For each digits sweep with collapsing configurations, the same grid runs twice with
:func:`sweeper.sweep.run_sweep` (2 trials at a time, 1 CPU each, same seed and epochs):

* **full grid**: every trial trains every epoch (no scheduler, no collapse abort);
* **early stopping**: ``search.scheduler: asha`` on the objective (clipped embedding RankMe,
  evaluated every ``--every-n-epochs``, default 2) with ``grace_period``/``reduction_factor``, plus
  ``evaluation.collapse`` (abort a trial whose RankMe stays below ``fraction · K`` for two
  evaluations).

Reported: the trial-epochs each sweep trained (``epochs_done`` of ``trials.csv``, summed), the
share saved, and the oracle linear-probe accuracy of each sweep's label-free pick (the config's
RankMe plateau rule) against the best accuracy of the full grid (the labelled oracle) and
against the full grid's own label-free pick (what early stopping changes). Stopped
and collapsed trials are never picked. ASHA is asynchronous: the first trials to reach a rung
always continue, so the grid order matters; ``--order shuffled`` (the default) runs the grid in
a seeded random order, as a random or Optuna search would, ``ascending`` in the config's order.

Usage::

    python bench/early_stopping.py                          # VICReg ν ∈ [0, 16] and SimCLR τ ∈ [0.05, 2]
    python bench/early_stopping.py --sweeps vicreg --reduction-factor 2
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from _common import ROOT, bench_config, fmt, machine_line, markdown_table, timed_sweep, workdir

from sweeper.config import SweeperConfig

SWEEPS: dict[str, tuple[str, str, list[float]]] = {
    "vicreg": (
        "configs/digits/vicreg.yaml",
        "method.params.cov_weight",
        [0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 4.0, 16.0],
    ),
    "simclr": (
        "configs/digits/simclr.yaml",
        "method.params.temperature",
        [0.05, 0.1, 0.2, 0.5, 1.0, 2.0],
    ),
}
ORACLE = "oracle/linear/digits"


def _pick_accuracy(result: Any, config: SweeperConfig) -> tuple[Any, float]:
    """The label-free pick (``rankme/<selection.rule>``): its parameter value and accuracy."""
    pick = result.picks[f"rankme/{config.selection.rule}"]
    rows = result.table[result.table["trial_id"].isin(pick.trial_ids)]
    return next(iter(pick.params.values())), float(rows[ORACLE].mean())


def run_pair(
    directory: Any,
    sweep: str,
    *,
    epochs: int,
    grace_period: int,
    reduction_factor: float,
    collapse_fraction: float,
    order: str,
    every_n_epochs: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """The full grid and the early-stopped sweep of ``sweep``; trial tables, picks, epochs."""
    path, key, values = SWEEPS[sweep]
    values = list(values)
    if order == "shuffled":
        random.Random(seed).shuffle(values)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    common = {
        "train.epochs": epochs,
        "search.space": {key: {"values": values}},
        "search.max_concurrent": 2,
        "search.resources": {"cpu": 1, "gpu": 0},
        "evaluation.oracle": ["linear"],
        "evaluation.every_n_epochs": every_n_epochs,
    }
    full_config = bench_config(directory, f"bench-es-{sweep}-full-{stamp}", base=ROOT / path, overrides=common)
    early_config = bench_config(
        directory,
        f"bench-es-{sweep}-asha-{stamp}",
        base=ROOT / path,
        overrides={
            **common,
            "search.scheduler": "asha",
            "search.grace_period": grace_period,
            "search.reduction_factor": reduction_factor,
            "evaluation.collapse": {"fraction": collapse_fraction},
        },
    )
    full, full_s = timed_sweep(full_config)
    early, early_s = timed_sweep(early_config)
    oracle_best = float(full.table.loc[full.table["status"] == "ok", ORACLE].max())
    full_pick = _pick_accuracy(full, full_config)
    early_pick = _pick_accuracy(early, early_config)
    full_epochs, early_epochs = int(full.table["epochs_done"].sum()), int(early.table["epochs_done"].sum())
    return {
        "sweep": sweep,
        "key": key,
        "order": values,
        "full": full.table,
        "early": early.table,
        "full_s": full_s,
        "early_s": early_s,
        "full_epochs": full_epochs,
        "early_epochs": early_epochs,
        "saved": 1 - early_epochs / full_epochs,
        "oracle_best": oracle_best,
        "full_pick": full_pick,
        "early_pick": early_pick,
        "gap_points": 100 * (oracle_best - early_pick[1]),
        "gap_full_pick_points": 100 * (full_pick[1] - early_pick[1]),
    }


def _trial_rows(out: dict[str, Any]) -> list[list[str]]:
    key = out["key"]
    early = out["early"].set_index(key)
    rows = []
    for _, row in out["full"].sort_values(key).iterrows():
        other = early.loc[row[key]]
        rows.append(
            [
                f"{row[key]:g}",
                fmt(row["rankme/embedding"], 1),
                fmt(100 * row[ORACLE], 1),
                str(int(row["epochs_done"])),
                str(other["status"]),
                str(int(other["epochs_done"])),
                fmt(other["rankme/embedding"], 1),
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", nargs="+", choices=sorted(SWEEPS), default=["vicreg", "simclr"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--grace-period", type=int, default=2, help="ASHA's first rung, in epochs")
    parser.add_argument("--reduction-factor", type=float, default=4.0, help="Ray's ASHA default")
    parser.add_argument("--collapse-fraction", type=float, default=0.02, help="collapse below fraction · K")
    parser.add_argument("--every-n-epochs", type=int, default=2, help="RankMe evaluated every N epochs (both sweeps)")
    parser.add_argument("--order", choices=["shuffled", "ascending"], default="shuffled")
    parser.add_argument("--workdir", default=None, help="keep the sweeps and MLflow store here (default: temporary)")
    args = parser.parse_args(argv)
    print(
        f"digits sweeps, {args.epochs} epochs, 2 trials at a time; ASHA grace {args.grace_period}, "
        f"reduction {args.reduction_factor:g}, collapse below {args.collapse_fraction:g}·K; grid order "
        f"{args.order}; {machine_line()}\n"
    )
    summary = []
    with workdir(args.workdir) as directory:
        for sweep in args.sweeps:
            out = run_pair(
                directory,
                sweep,
                epochs=args.epochs,
                grace_period=args.grace_period,
                reduction_factor=args.reduction_factor,
                collapse_fraction=args.collapse_fraction,
                order=args.order,
                every_n_epochs=args.every_n_epochs,
            )
            name = out["key"].rsplit(".", 1)[-1]
            print(f"{sweep}: {name} grid run in the order {out['order']}\n")
            headers = [name, "full RankMe", "full acc (%)", "full epochs", "ASHA status", "ASHA epochs", "ASHA RankMe"]
            print(markdown_table(headers, _trial_rows(out)) + "\n", flush=True)
            summary.append(out)
    rows = [
        [
            out["sweep"],
            f"{out['full_epochs']} / {out['early_epochs']}",
            f"{100 * out['saved']:.0f} %",
            f"{fmt(out['full_s'], 0)} / {fmt(out['early_s'], 0)}",
            fmt(100 * out["oracle_best"], 1),
            f"{out['full_pick'][0]:g}: {fmt(100 * out['full_pick'][1], 1)}",
            f"{out['early_pick'][0]:g}: {fmt(100 * out['early_pick'][1], 1)}",
            f"{out['gap_points']:.1f}",
            f"{out['gap_full_pick_points']:.1f}",
        ]
        for out in summary
    ]
    headers = [
        "sweep",
        "trial-epochs full / ASHA",
        "saved (goal ≥ 50 %)",
        "wall full / ASHA (s)",
        "oracle best acc (%)",
        "full-grid RankMe pick: acc",
        "ASHA RankMe pick: acc",
        "gap to oracle (points, goal ≤ 0.5)",
        "gap to full-grid pick (points)",
    ]
    print(markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
