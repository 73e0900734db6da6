"""What the ``bench/`` scripts share: configs in a scratch directory, plain engine runs, timed
sweeps, the machine line and markdown tables. Private to the benchmarks (not part of sweeper)."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"

try:  # running from a checkout without `pip install -e .`
    import sweeper  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sweeper.config import SweeperConfig, load_config  # noqa: E402
from sweeper.data import DatasetSplits  # noqa: E402
from sweeper.engine import Trainer  # noqa: E402


def machine_line() -> str:
    """torch version, cores, and the load averages (1, 5, 15 min) at the time of the call."""
    one, five, fifteen = os.getloadavg()
    return (
        f"torch {torch.__version__}, {os.cpu_count()} CPU cores, "
        f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; the first column left-aligned, the others right-aligned."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join([":---", *["---:"] * (len(headers) - 1)]) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@contextlib.contextmanager
def workdir(path: str | None) -> Iterator[Path]:
    """``path`` (created) when given, else a temporary directory removed afterwards."""
    if path is not None:
        directory = Path(path).expanduser().resolve()
        directory.mkdir(parents=True, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="sweeper-bench-") as tmp:
        yield Path(tmp)


def bench_config(
    directory: Path,
    name: str,
    *,
    base: Path = QUICKSTART,
    overrides: dict[str, Any] | None = None,
) -> SweeperConfig:
    """``base`` with ``overrides`` (dotted keys), named ``name``, its sweeps and MLflow store in
    ``directory``."""
    values = {
        "name": name,
        "storage_path": str(directory / "sweeps"),
        "tracking.uri": f"sqlite:///{directory / 'mlflow.db'}",
        **(overrides or {}),
    }
    return load_config(base, overrides=values)


def searched(config: SweeperConfig) -> tuple[str, list[Any]]:
    """The single grid key of ``config`` and its values, in order."""
    (key, spec), *rest = config.search.space.items()
    if rest or spec.values is None:
        raise ValueError("the benchmarks sweep exactly one grid key")
    return key, list(spec.values)


@dataclass(frozen=True)
class PlainTrial:
    """A trial run as a plain loop over the engine."""

    value: Any
    metrics: dict[str, float]
    status: str
    epochs_done: int
    wall_s: float


def plain_trial(
    config: SweeperConfig, key: str, value: Any, *, threads: int, data: DatasetSplits | None = None
) -> PlainTrial:
    """Train the trial ``key=value`` of ``config`` with :class:`sweeper.engine.Trainer` in this
    process, ``threads`` torch threads, no Ray, no MLflow, no checkpoints."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    trainer = Trainer(config.with_overrides({key: value}), data=data)
    metrics: dict[str, float] = {}
    status, epoch = "running", 0
    for result in trainer.epochs():
        metrics |= result.metrics
        status, epoch = result.status, result.epoch
    return PlainTrial(value, metrics, status, epoch, time.perf_counter() - started)


def timed_sweep(config: SweeperConfig) -> tuple[Any, float]:
    """``run_sweep(config)`` (embedded Ray, MLflow, checkpoints, report) and its wall time (s)."""
    from sweeper.sweep import run_sweep

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    started = time.perf_counter()
    result = run_sweep(config, verbose=0)
    return result, time.perf_counter() - started


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def add_quickstart_arguments(parser: argparse.ArgumentParser, *, trials: int, epochs: int, workdir: bool) -> None:
    """``--trials`` (the first K quickstart grid values), ``--epochs`` and, with ``workdir``,
    ``--workdir`` (where to keep the sweeps and the MLflow store)."""
    parser.add_argument("--trials", type=int, default=trials, help="K trials (the first K quickstart grid values)")
    parser.add_argument("--epochs", type=int, default=epochs, help="epochs per trial")
    if workdir:
        parser.add_argument("--workdir", help="keep the sweeps and MLflow store here (default: temporary)")
