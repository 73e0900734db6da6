"""Benchmark: training throughput of a data-parallel trial, 1 vs N workers.

Each side is :class:`sweeper.engine.Trainer` in a process group of W processes started by
``sweeper.distributed.spawn`` (what Ray Train gives a multi-worker trial, without Ray's start-up
in the timing): DistributedDataParallel, SyncBatchNorm, the global batch split across the
workers. images/s = global images per epoch / the epoch's training time (``time/epoch_s`` of
rank 0, which waits for the others at every step's gradient all-reduce); the first epoch is a
warm-up and the median of the others is the figure. Scaling efficiency = images/s with W
workers / (W × images/s with 1).

* CPU (default): gloo, the cores shared out between the workers (``--threads`` per worker,
  default cores / W), the quickstart's model on digits; weak scaling (``--batch-per-worker``).
* ``--gpus N``: NCCL, one GPU per worker, bf16 autocast, ResNet-50 at ``--image-size``
  (default 224) on digits upscaled (the data at hand; throughput does not depend on the
  pixels), 1 vs N GPUs.

Usage::

    python bench/ddp.py                      # CPU: 1 vs 2 workers
    python bench/ddp.py --gpus 8 --epochs 4  # CUDA machine: 1 vs 8 GPUs, ResNet-50 bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

import torch
from _common import QUICKSTART, fmt, machine_line, markdown_table

from sweeper import distributed
from sweeper.config import SweeperConfig, load_config
from sweeper.engine import Trainer


def bench_config(*, workers: int, batch_per_worker: int, epochs: int, gpu: bool, image_size: int) -> SweeperConfig:
    """The quickstart trial, evaluated only after its last epoch and without probes; on GPUs
    ResNet-50 in bf16."""
    overrides: dict[str, Any] = {
        "train.epochs": epochs,
        "train.batch_size": batch_per_worker * workers,
        "train.warmup_epochs": 0,
        "evaluation.every_n_epochs": epochs,
        "evaluation.rankme_samples": 512,
        "evaluation.oracle": [],
        "evaluation.collapse": None,
        "search.resources.workers": workers,
        "data.image_size": image_size,
    }
    if gpu:
        overrides |= {"model.backbone": "resnet50", "train.precision": "bf16", "train.device": "cuda"}
    return load_config(QUICKSTART, overrides=overrides)


def _epoch_times(config: SweeperConfig, gpu: bool) -> dict[str, Any]:
    """In each spawned process: train, and return rank 0's epoch times and images per epoch."""
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    trainer = Trainer(config, device=device)
    seconds = [result.metrics["time/epoch_s"] for result in trainer.epochs()]
    return {"images": trainer.steps_per_epoch * trainer.batch_size, "seconds": seconds}


def measure(
    workers: int, *, batch_per_worker: int, epochs: int, threads: int, gpu: bool, image_size: int
) -> dict[str, float]:
    """images/s (median epoch after the first, and best epoch) with ``workers`` processes."""
    config = bench_config(
        workers=workers, batch_per_worker=batch_per_worker, epochs=epochs, gpu=gpu, image_size=image_size
    )
    if workers == 1 and not gpu:
        torch.set_num_threads(threads)
        result = _epoch_times(config, gpu)
    else:
        backend = "nccl" if gpu else "gloo"
        result = distributed.spawn(_epoch_times, config, gpu, world_size=workers, threads=threads, backend=backend)[0]
    timed = result["seconds"][1:] or result["seconds"]
    return {
        "median": result["images"] / statistics.median(timed),
        "best": result["images"] / min(timed),
        "batch": float(batch_per_worker * workers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (CPU)")
    parser.add_argument("--gpus", type=int, default=0, help="N: compare 1 vs N GPUs (ResNet-50, bf16)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per side (the first is a warm-up)")
    parser.add_argument("--batch-per-worker", type=int, default=None, help="default: 128 (CPU), 64 (GPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker (CPU)")
    parser.add_argument("--image-size", type=int, default=None, help="default: 16 (CPU), 224 (GPU)")
    args = parser.parse_args()
    gpu = args.gpus > 0
    if gpu and torch.cuda.device_count() < args.gpus:
        parser.error(f"--gpus {args.gpus}: this machine has {torch.cuda.device_count()} CUDA devices")
    counts = [1, args.gpus] if gpu else args.workers
    batch = args.batch_per_worker or (64 if gpu else 128)
    image_size = args.image_size or (224 if gpu else 16)
    cores = os.cpu_count() or 1
    rows, baseline = [], None
    for workers in counts:
        threads = args.threads or max(1, cores // workers)
        result = measure(
            workers, batch_per_worker=batch, epochs=args.epochs, threads=threads, gpu=gpu, image_size=image_size
        )
        baseline = baseline or result["median"]
        efficiency = result["median"] / (workers * baseline)
        what = f"{workers} GPU" if gpu else f"{workers} × {threads} thread(s)"
        rows.append([what, int(result["batch"]), fmt(result["median"], 0), fmt(result["best"], 0), fmt(efficiency)])
    model = "ResNet-50, bf16, NCCL" if gpu else "quickstart small CNN, gloo"
    print(f"{model}, {image_size} px digits, {batch} images per worker per step; {machine_line()}")
    print(markdown_table(["workers", "global batch", "images/s (median)", "images/s (best)", "efficiency"], rows))


if __name__ == "__main__":
    main()
