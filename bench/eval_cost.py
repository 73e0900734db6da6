"""Benchmark: the cost of label-free evaluation (RankMe) vs the labelled linear-probe oracle.

For each trial (the first K quickstart grid values: VICReg's covariance weight on digits, 1
thread), the engine trains the model for the given epochs, then on the same trained model times:

* **RankMe**: :meth:`sweeper.evaluation.Evaluator.label_free` — embeddings and
  representations of the (up to ``evaluation.rankme_samples``) clean training images, and the
  RankMe of both: what a label-free sweep runs at every evaluation;
* **linear probe**: what the oracle needs for the same model — frozen features of the train and
  test splits (:meth:`Evaluator.representations`) and :func:`sweeper.probes.linear_probe_accuracy`
  (``evaluation.linear_epochs`` epochs of SGD, the RankMe papers' protocol on precomputed
  features); the 20-NN probe is timed beside it.

Each evaluation is repeated and its best time kept. The training time of the trial is shown for
scale.

Usage::

    python bench/eval_cost.py                   # K = 3 trials of 10 epochs
    python bench/eval_cost.py --trials 2 --epochs 5 --repeats 3
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import QUICKSTART, add_quickstart_arguments, fmt, machine_line, markdown_table

from sweeper.config import SweeperConfig, load_config
from sweeper.data import load_dataset
from sweeper.engine import Trainer
from sweeper.probes import knn_accuracy, linear_probe_accuracy


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - started)
    return min(times), value


def evaluation_costs(config: SweeperConfig, *, repeats: int) -> dict[str, float]:
    """Train ``config`` (no evaluation on the way), then time RankMe, the linear probe and k-NN."""
    evaluation = config.evaluation
    trainer = Trainer(config.with_overrides({"evaluation.oracle": []}), data=load_dataset(config.data))
    final = list(trainer.epochs())[-1]
    train, test = trainer.data.train, trainer.data.test

    def linear() -> float:
        train_x, test_x = trainer.evaluator.representations(train), trainer.evaluator.representations(test)
        return linear_probe_accuracy(
            train_x, train.labels, test_x, test.labels, epochs=evaluation.linear_epochs, seed=config.seed
        )

    def knn() -> float:
        train_x, test_x = trainer.evaluator.representations(train), trainer.evaluator.representations(test)
        return knn_accuracy(
            train_x, train.labels, test_x, test.labels, k=evaluation.knn_k, temperature=evaluation.knn_temperature
        )

    rankme_s, metrics = _best(trainer.evaluator.label_free, repeats)
    linear_s, accuracy = _best(linear, repeats)
    knn_s, _ = _best(knn, repeats)
    return {
        "train_s": final.metrics["time/train_s"],
        "rankme_s": rankme_s,
        "linear_s": linear_s,
        "knn_s": knn_s,
        "rankme": metrics["rankme/embedding"],
        "accuracy": accuracy,
        "samples": min(evaluation.rankme_samples, len(train)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_quickstart_arguments(parser, trials=3, epochs=10, workdir=False)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each evaluation; the best is kept")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = load_config(QUICKSTART, overrides={"train.epochs": args.epochs})
    (key, spec), *_ = config.search.space.items()
    print(
        f"quickstart trials, {args.epochs} epochs, {args.threads} thread(s), best of {args.repeats}; {machine_line()}\n"
    )
    rows, ratios = [], []
    for value in (spec.values or [])[: args.trials]:
        cost = evaluation_costs(config.with_overrides({key: value}), repeats=args.repeats)
        ratios.append(cost["linear_s"] / cost["rankme_s"])
        rows.append(
            [
                f"{key.rsplit('.', 1)[-1]} = {value:g}",
                fmt(cost["train_s"], 1),
                f"{fmt(cost['rankme_s'], 3)} ({cost['samples']} images)",
                fmt(cost["linear_s"], 3),
                fmt(cost["knn_s"], 3),
                f"{ratios[-1]:.1f}×",
                f"{fmt(cost['rankme'], 1)} / {fmt(100 * cost['accuracy'], 1)} %",
            ]
        )
    headers = [
        "trial",
        "training (s)",
        "RankMe (s)",
        "linear probe (s)",
        "20-NN (s)",
        "linear / RankMe",
        "RankMe / linear acc",
    ]
    print(markdown_table(headers, rows))
    print(f"\nthe linear-probe oracle costs {min(ratios):.1f}–{max(ratios):.1f}× a RankMe evaluation")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
