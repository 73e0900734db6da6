"""``sweeper`` command line: argument parsing only.

Every expected problem (a malformed config, an existing sweep name, an unreachable tracking
server, a missing file) ends with one line ``sweeper: error: ...`` and exit code 2, before
anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sweeper.config import SweeperConfig

__all__ = ["main"]

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("sweeper: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # expected user errors only; anything else is a bug: re-raise
        if not _is_user_error(exc):
            raise
        print(f"sweeper: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _is_user_error(exc: Exception) -> bool:
    from sweeper.config import ConfigError

    kinds: list[type[Exception]] = [ConfigError, FileNotFoundError]
    # Only modules already imported can have raised their errors: never import ray/mlflow here.
    for module, name in (
        ("sweeper.sweep", "SweepError"),
        ("sweeper.tracking", "TrackingError"),
        ("sweeper.storage", "StorageError"),
    ):
        if module in sys.modules:
            kinds.append(getattr(sys.modules[module], name))
    return isinstance(exc, tuple(kinds))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweeper",
        description="Label-free hyperparameter sweeps for self-supervised pretraining (RankMe).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a sweep from a YAML config")
    run.add_argument("config", type=Path, help="YAML config, e.g. configs/quickstart.yaml")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=5 (repeatable)",
    )
    run.add_argument("--name", help="sweep name (default: the config's name)")
    run.add_argument("--address", help="existing Ray cluster: auto or ray://HOST:10001 (default: embedded)")
    run.add_argument("--resume", action="store_true", help="continue the sweep of the same name")
    run.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    run.set_defaults(handler=_run)

    submit = commands.add_parser("submit", help="send a sweep to a Ray cluster as a Ray Job")
    submit.add_argument("config", type=Path, help="YAML config under the current directory")
    submit.add_argument("--address", required=True, help="the head's dashboard, e.g. http://HEAD:8265")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--runtime-env", type=Path, help="YAML/JSON file merged into the job's runtime_env")
    submit.add_argument("--wait", action="store_true", help="stream the driver's logs, exit with its status")
    submit.set_defaults(handler=_submit)

    resume = commands.add_parser("resume", help="continue an interrupted sweep")
    resume.add_argument("sweep", help="sweep directory or URI, or sweep name under --storage-path")
    resume.add_argument("--storage-path", default="./sweeps", help="where to look for a sweep name (a path or a URI)")
    resume.add_argument("--address", help="existing Ray cluster: auto or ray://HOST:10001")
    resume.add_argument(
        "--num-samples", type=int, help="grow the sweep to this many trials (grid: repeats of the grid)"
    )
    resume.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    resume.set_defaults(handler=_resume)

    status = commands.add_parser("status", help="trials of a sweep, their states and the current picks")
    status.add_argument("sweep", help="sweep directory or URI, or sweep name under --storage-path")
    status.add_argument("--storage-path", default="./sweeps", help="where to look for a sweep name (a path or a URI)")
    status.set_defaults(handler=_status)

    compare = commands.add_parser(
        "compare",
        help="oracle vs label-free selection report of one or more sweeps",
        description=(
            "For each sweep (finished or not): print the selection report and write report.md/.csv/"
            ".json and plots into its directory; log them to the sweep's MLflow parent run when "
            "the tracking store holds it. With several sweeps (or --out): also a combined report."
        ),
    )
    compare.add_argument("sweeps", nargs="+", help="sweep directories, or sweep names under --storage-path")
    compare.add_argument("--storage-path", default="./sweeps", help="where to look for sweep names")
    compare.add_argument(
        "--out",
        type=Path,
        help="directory of the combined report (default with several sweeps: ./compare-YYYYmmdd-HHMMSS)",
    )
    compare.add_argument("--tracking-uri", help="MLflow store to log into [each sweep's tracking.uri]")
    compare.add_argument("--no-tracking", action="store_true", help="write the files only, log nothing")
    compare.set_defaults(handler=_compare)

    rankme = commands.add_parser("rankme", help="label-free metrics of an embedding file")
    rankme.add_argument("file", type=Path, help=".npy or .pt file with an (N, K) embedding matrix")
    rankme.add_argument("--json", action="store_true", help="print JSON")
    rankme.set_defaults(handler=_rankme)
    return parser


def _run(args: argparse.Namespace) -> int:
    from sweeper.config import load_config

    overrides = list(args.overrides) + ([f"name={args.name}"] if args.name else [])
    config = load_config(args.config, overrides=overrides)
    return _sweep_and_print(config, address=args.address, resume=args.resume, quiet=args.quiet)


def _sweep_and_print(config: SweeperConfig, *, address: str | None, resume: bool, quiet: bool) -> int:
    from sweeper.report import format_summary
    from sweeper.sweep import run_sweep

    result = run_sweep(config, address=address, resume=resume, verbose=0 if quiet else 1)
    print()
    print(format_summary(result.table, result.picks, config))
    print(f"Sweep directory: {result.directory}")
    print(f"MLflow: {config.tracking.uri}, experiment {config.experiment_name!r}")
    print(f"        parent run {result.parent_run_id}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    import yaml

    from sweeper.config import ConfigError, load_config

    load_config(args.config, overrides=args.overrides)  # fail here, not on the cluster
    runtime_env = None
    if args.runtime_env is not None:
        if not args.runtime_env.is_file():
            raise FileNotFoundError(f"--runtime-env {args.runtime_env} not found")
        runtime_env = yaml.safe_load(args.runtime_env.read_text())
        if not isinstance(runtime_env, dict):
            raise ConfigError(f"--runtime-env {args.runtime_env}: expected a mapping")
    from sweeper.submit import submit_sweep

    return submit_sweep(
        args.config, address=args.address, overrides=args.overrides, runtime_env=runtime_env, wait=args.wait
    )


def _resume(args: argparse.Namespace) -> int:
    from sweeper.sweep import load_sweep_config

    config = load_sweep_config(args.sweep, storage_path=args.storage_path)
    if args.num_samples is not None:
        config = config.with_overrides({"search.num_samples": args.num_samples})
    return _sweep_and_print(config, address=args.address, resume=True, quiet=args.quiet)


def _status(args: argparse.Namespace) -> int:
    from sweeper.report import format_summary, select
    from sweeper.sweep import load_sweep_config, sweep_location, trial_table

    config = load_sweep_config(args.sweep, storage_path=args.storage_path)
    location = sweep_location(config)
    table = trial_table(location, config)
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    print(f"{location.uri}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    print(format_summary(table, select(table, config), config))
    return 0


def _compare(args: argparse.Namespace) -> int:
    import time

    from sweeper.report import format_comparison, format_summary
    from sweeper.sweep import compare_sweeps

    out = args.out
    if out is None and len(args.sweeps) > 1:
        out = Path(f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    result = compare_sweeps(
        args.sweeps,
        storage_path=args.storage_path,
        out=out,
        tracking_uri=args.tracking_uri,
        track=not args.no_tracking,
    )
    for sweep in result.reports:
        assert sweep.directory is not None
        print(format_summary(sweep.table, sweep.picks, sweep.config))
        names = ", ".join(path.name for path in result.files[sweep.directory])
        print(f"Written to {sweep.directory}: {names}")
        print(f"MLflow: {result.tracking[sweep.directory]}")
        print()
    if result.combined:
        print(format_comparison(result.reports))
        print(f"Combined report: {out.resolve()}/ ({', '.join(path.name for path in result.combined)})")
    return 0


def _rankme(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from sweeper.metrics import LABEL_FREE_METRICS, EmbeddingStats

    if not args.file.is_file():
        raise FileNotFoundError(f"{args.file} not found")
    if args.file.suffix == ".npy":
        z = torch.from_numpy(np.load(args.file))
    else:
        z = torch.load(args.file, map_location="cpu", weights_only=True)
    if z.ndim != 2:
        raise FileNotFoundError(f"{args.file}: expected an (N, K) matrix, got shape {tuple(z.shape)}")
    stats = EmbeddingStats(z.shape[1], max_samples=len(z))
    stats.update(z)
    values = stats.compute([name for name in LABEL_FREE_METRICS if name != "lidar"])
    if args.json:
        print(json.dumps({"file": str(args.file), "shape": list(z.shape), **values}))
    else:
        print(f"{args.file}: N={z.shape[0]} K={z.shape[1]}")
        for name, value in values.items():
            print(f"  {name:16s} {value:.6g}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
