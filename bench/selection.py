"""Table 1 of the RankMe paper at small scale: how close each label-free selection rule comes to
the labelled oracle, over eight ordered sweeps of the hyperparameters the papers sweep.

Each sweep is a sweeper sweep (embedded Ray, MLflow, checkpoints) of one hyperparameter over five
values, every configuration trained with ``--seeds`` seeds, every label-free metric sweeper has
logged (RankMe of the embedding and of the representation, classical rank, α-ReQ, LiDAR of the
embedding and of the representation, NESum, stable rank, self-clustering, coherence,
pseudo-condition number, TwoNN intrinsic dimension) and both oracles (linear probe, 20-NN)
measured on the whole test split.
The sweeps, their values and every rule's default (plateau tolerance 1 %, α-ReQ closest to 1,
the rest "max", or "min" for self-clustering) were fixed from the papers before this bench was
first run; nothing here is tuned to its results.

Then ``sweeper compare`` of all the sweeps writes the table (rows = selection rules, columns =
sweeps, cells = accuracy of the pick and its gap to the oracle with a 95 % seed-bootstrap
interval; the mean and worst gap per rule; Kendall τ of each metric per sweep) as markdown, CSV
and JSON, plus its figures, into ``<workdir>/compare-<dataset>/``.

The bench resumes where it stopped: a finished sweep is read back, an interrupted one resumed
(`sweeper resume` semantics), a missing one started. Keep ``--workdir`` to resume.

Usage::

    python bench/selection.py --workdir runs/selection                      # Fashion-MNIST, ~45 min on 2 quiet cores
    python bench/selection.py --workdir runs/selection --dataset digits      # the same sweeps on digits
    python bench/selection.py --quick                                       # smoke test: 2 sweeps, 1 seed, 1 epoch
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import ROOT, machine_line, workdir

from sweeper.config import SweeperConfig, load_config
from sweeper.names import LABEL_FREE_METRICS

DIGITS = ROOT / "configs" / "digits"
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class Sweep:
    """One ordered sweep: a method's digits config, the swept key and its values (ascending)."""

    name: str
    method: str
    key: str
    values: tuple[float, ...]


#: The hyperparameters the RankMe paper's Table 1 sweeps (VICReg ν and λ, SimCLR τ, learning rate
#: and weight decay, DINO τ_teacher) plus Barlow Twins' λ and BYOL's EMA; five values each, around
#: each paper's default, wide enough to reach its failure side.
SWEEPS: tuple[Sweep, ...] = (
    Sweep("vicreg-cov", "vicreg", "method.params.cov_weight", (0.04, 0.2, 1.0, 5.0, 25.0)),
    Sweep("vicreg-inv", "vicreg", "method.params.inv_weight", (5.0, 10.0, 25.0, 50.0, 100.0)),
    Sweep("simclr-temp", "simclr", "method.params.temperature", (0.05, 0.1, 0.2, 0.5, 1.0)),
    Sweep("simclr-lr", "simclr", "train.lr", (3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2)),
    Sweep("simclr-wd", "simclr", "train.weight_decay", (1.0e-4, 1.0e-3, 1.0e-2, 1.0e-1, 0.5)),
    Sweep("barlow-lambda", "barlow_twins", "method.params.lambda_offdiag", (5.0e-4, 2.0e-3, 5.1e-3, 1.5e-2, 5.0e-2)),
    Sweep("dino-teacher-temp", "dino", "method.params.teacher_temp", (0.02, 0.04, 0.06, 0.08, 0.1)),
    Sweep("byol-ema", "byol", "method.params.base_momentum", (0.9, 0.96, 0.99, 0.996, 0.999)),
)


def sweep_config(sweep: Sweep, args: argparse.Namespace, directory: Path) -> SweeperConfig:
    """The sweeper config of ``sweep`` on ``args.dataset``, kept in ``directory``."""
    data: dict[str, Any] = {"data.dataset": args.dataset, "data.image_size": 16}
    if args.dataset in ("fashion_mnist", "mnist"):
        data |= {"data.root": args.root, "data.train_per_class": args.train_per_class}
    return load_config(
        DIGITS / f"{sweep.method}.yaml",
        overrides={
            "name": f"selection-{args.dataset.replace('_', '-')}-{sweep.name}",
            "storage_path": str(directory / "sweeps"),
            "tracking.uri": f"sqlite:///{directory / 'mlflow.db'}",
            **data,
            "train.epochs": args.epochs,
            "evaluation.every_n_epochs": args.epochs,
            "evaluation.label_free": list(LABEL_FREE_METRICS),
            "evaluation.oracle": ["linear", "knn"],
            "search.algorithm": "grid",
            "search.space": {sweep.key: {"values": list(sweep.values)}},
            "search.num_samples": args.seeds,
            "search.max_concurrent": args.concurrent,
            "search.resources": {"cpu": 1, "gpu": 0},
            "search.scheduler": None,
            "selection.rule": "plateau",
            "selection.param": sweep.key,
            "selection.tolerance": 0.01,
            "selection.order": "ascending",
        },
    )


def run_or_resume(config: SweeperConfig) -> str:
    """Start the sweep, resume it where it stopped, or read it back when it is finished."""
    from sweeper.sweep import run_sweep, sweep_location, sweep_report

    location = sweep_location(config)
    if location.exists():
        report = sweep_report(location, config)
        if not report.unfinished():
            return "finished before"
        run_sweep(config, resume=True, verbose=0)
        return "resumed"
    run_sweep(config, verbose=0)
    return "ran"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist", "digits"])
    parser.add_argument("--root", default=FASHION_MNIST_ROOT, help="the IDX files (fashion_mnist, mnist)")
    parser.add_argument("--train-per-class", type=int, default=250, help="class-balanced train subset")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration (grid repeats)")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once (one CPU each)")
    parser.add_argument("--sweeps", nargs="+", choices=[s.name for s in SWEEPS], help="default: all eight")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 sweeps, 1 seed, 1 epoch, 20 per class")
    parser.add_argument("--workdir", help="keep the sweeps, the MLflow store and the table here (default: temporary)")
    args = parser.parse_args()
    chosen = [s for s in SWEEPS if args.sweeps is None or s.name in args.sweeps]
    if args.quick:
        chosen = chosen[:2] if args.sweeps is None else chosen
        args.seeds, args.epochs, args.train_per_class = 1, 1, 20

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from sweeper.report import format_comparison
    from sweeper.sweep import compare_sweeps

    started = time.perf_counter()
    with workdir(args.workdir) as directory:
        configs = [sweep_config(sweep, args, directory) for sweep in chosen]
        for done, config in enumerate(configs, 1):
            began = time.perf_counter()
            what = run_or_resume(config)
            print(f"[{done}/{len(configs)}] {config.name}: {what} in {time.perf_counter() - began:.0f} s", flush=True)
        out = directory / f"compare-{args.dataset}"
        comparison = compare_sweeps(
            [config.name for config in configs], storage_path=directory / "sweeps", out=out, track=True
        )
        elapsed = time.perf_counter() - started
        print(f"\n{machine_line()}")
        print(
            f"{args.dataset}: {len(configs)} sweeps x 5 values x {args.seeds} seeds, {args.epochs} epochs"
            + (f", {args.train_per_class} train images per class" if args.dataset != "digits" else "")
            + f"; {elapsed / 60:.1f} min in all (this run)\n"
        )
        print(format_comparison(comparison.reports))
        print(f"\nTable, CSV, JSON and figures: {out}/ ({', '.join(path.name for path in comparison.combined)})")


if __name__ == "__main__":
    main()
