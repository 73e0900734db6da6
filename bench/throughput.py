"""Benchmark: training images/s of a sweeper trial vs a bare PyTorch + lightly loop.

Ours: :class:`sweeper.engine.Trainer` on the config (label-free evaluation only after the last
epoch, no oracle), images/s = trained images / ``time/train_s`` (the time spent in the
training epochs). The alternative: the loop people write by hand on the same model (the
config's backbone + lightly ``ProjectionHead``), the same lightly loss, batch size, optimiser,
warm-up/cosine schedule and the same batched augmentation (``MultiViewAugment``), timed over
the same epochs. The two alternate in one process (ours, bare, ours, ...) so that a load spike
on a shared machine does not land on one side only; each epoch is timed, and the fastest epoch
(the least disturbed) is the headline figure, with the median and mean epoch beside it.

Usage::

    python bench/throughput.py                          # quickstart (VICReg, digits 16 px), 5 epochs
    python bench/throughput.py --method simclr --epochs 3 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import QUICKSTART, fmt, machine_line, markdown_table
from lightly.loss import NTXentLoss, VICRegLoss
from lightly.utils.scheduler import CosineWarmupScheduler
from torch import nn

from sweeper.config import SweeperConfig, load_config
from sweeper.data import DatasetSplits, MultiViewAugment, load_dataset
from sweeper.engine import Trainer
from sweeper.models import build_backbone, build_projector

_PARAMS = {"vicreg": {"cov_weight": 1.0}, "simclr": {"temperature": 0.5}}


def _loss(config: SweeperConfig) -> nn.Module:
    params = config.method.params
    if config.method.name == "vicreg":
        return VICRegLoss(
            lambda_param=params["inv_weight"], mu_param=params["var_weight"], nu_param=params["cov_weight"]
        )
    return NTXentLoss(temperature=params["temperature"])


def trainer_epochs(config: SweeperConfig, data: DatasetSplits) -> tuple[int, list[float]]:
    """Images per epoch and each epoch's training time (``time/epoch_s``) of the engine."""
    trainer = Trainer(config, data=data)
    seconds = [result.metrics["time/epoch_s"] for result in trainer.epochs()]
    return trainer.steps_per_epoch * trainer.batch_size, seconds


def bare_epochs(config: SweeperConfig, data: DatasetSplits) -> tuple[int, list[float]]:
    """Images per epoch and each epoch's time of a hand-written loop on the same model, loss,
    batch, optimiser, schedule and augmentation."""
    torch.manual_seed(config.seed)
    backbone = build_backbone(config.model.backbone, in_channels=data.channels, image_size=config.data.image_size)
    model = nn.Sequential(backbone.module, build_projector(backbone.dim, config.model.projector))
    criterion = _loss(config)
    augment = MultiViewAugment(num_views=2, flip=data.natural_images)
    train = config.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    images = data.train.images
    batch = min(train.batch_size, len(images))
    steps = len(images) // batch
    scheduler = CosineWarmupScheduler(
        optimizer, warmup_epochs=steps * train.warmup_epochs, max_epochs=steps * train.epochs, end_value=0.0
    )
    model.train()
    seconds = []
    for _ in range(train.epochs):
        started = time.perf_counter()
        order = torch.randperm(len(images))
        for step in range(steps):
            view_a, view_b = augment(images[order[step * batch : (step + 1) * batch]])
            loss = criterion(model(view_a), model(view_b))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        seconds.append(time.perf_counter() - started)
    return steps * batch, seconds


def measure(config: SweeperConfig, *, repeats: int, threads: int) -> dict[str, dict[str, float]]:
    """Images/s of each side over ``repeats`` alternating runs: ``best`` (the fastest epoch, the
    least disturbed by other load), ``median`` epoch and ``mean`` (all epochs), and their ratios."""
    torch.set_num_threads(threads)
    data = load_dataset(config.data)
    epochs: dict[str, list[float]] = {"ours": [], "bare": []}
    images = 0
    for _ in range(repeats):
        for side, run in (("ours", trainer_epochs), ("bare", bare_epochs)):
            images, seconds = run(config, data)
            epochs[side] += seconds
    result = {
        side: {
            "best": images / min(seconds),
            "median": images / statistics.median(seconds),
            "mean": images * len(seconds) / sum(seconds),
        }
        for side, seconds in epochs.items()
    }
    result["ratio"] = {key: result["ours"][key] / result["bare"][key] for key in result["ours"]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=sorted(_PARAMS), default="vicreg")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial's CPUs)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per side")
    args = parser.parse_args(argv)

    config = load_config(
        QUICKSTART,
        overrides={
            "method.name": args.method,
            "method.params": _PARAMS[args.method],
            "search.space": {f"method.params.{next(iter(_PARAMS[args.method]))}": {"values": [1.0]}},
            "selection.param": None,
            "train.epochs": args.epochs,
            "train.batch_size": args.batch_size,
            "data.image_size": args.image_size,
            "evaluation.every_n_epochs": args.epochs,
            "evaluation.oracle": [],
        },
    )
    print(
        f"{args.method} on digits {args.image_size}px, small_cnn + projector {config.model.projector}, "
        f"batch {args.batch_size}, {args.epochs} epochs, {args.threads} thread(s), {args.repeats} "
        f"alternating runs per side; {machine_line()}\n"
    )
    result = measure(config, repeats=args.repeats, threads=args.threads)
    rows = [
        [label, *(fmt(result[side][key], 0) for key in ("best", "median", "mean"))]
        for label, side in (("sweeper Trainer", "ours"), ("bare PyTorch + lightly", "bare"))
    ]
    rows.append(["ratio (goal ≥ 0.95×)", *(f"{result['ratio'][key]:.3f}×" for key in ("best", "median", "mean"))])
    print(markdown_table(["loop", "images/s, best epoch", "median epoch", "mean"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
