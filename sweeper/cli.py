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

from sweeper.errors import ConfigError, SweeperError

if TYPE_CHECKING:
    from sweeper.config import SweeperConfig

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_SWEEP_FAILED = 1  # the sweep ran, but no trial finished ok
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt as exc:  # a sweep's says how to resume it
        print(f"sweeper: {exc or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SweeperError as exc:  # expected user errors only; anything else is a bug and keeps its traceback
        print(f"sweeper: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweeper",
        description="Label-free hyperparameter sweeps for self-supervised pretraining (RankMe).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run(commands)
    _add_cluster_commands(commands)
    _add_sweep_commands(commands)
    _add_component_commands(commands)
    rankme = commands.add_parser("rankme", help="label-free metrics of an embedding file")
    rankme.add_argument("file", type=Path, help=".npy or .pt file with an (N, K) embedding matrix")
    rankme.add_argument("--json", action="store_true", help="print JSON")
    rankme.set_defaults(handler=_rankme)
    return parser


def _add_run(commands: argparse._SubParsersAction) -> None:
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
    run.add_argument(
        "--resume-if-exists",
        action="store_true",
        help="resume the sweep when it exists, else start it (for batch jobs that may be requeued)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress view while the sweep runs")
    run.add_argument("--verbose", action="store_true", help="Ray Tune's own console output instead of the view")
    run.set_defaults(handler=_run)


def _add_cluster_commands(commands: argparse._SubParsersAction) -> None:
    submit = commands.add_parser("submit", help="send a sweep to a Ray cluster as a Ray Job")
    submit.add_argument("config", type=Path, help="YAML config under the current directory")
    submit.add_argument("--address", required=True, help="the head's dashboard, e.g. http://HEAD:8265")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--runtime-env", type=Path, help="YAML/JSON file merged into the job's runtime_env")
    submit.add_argument("--wait", action="store_true", help="stream the driver's logs, exit with its status")
    submit.set_defaults(handler=_submit)

    slurm = commands.add_parser("slurm", help="run a sweep as a Slurm batch job that starts Ray on its nodes")
    slurm.add_argument("config", type=Path, help="YAML config")
    slurm.add_argument("--nodes", type=int, required=True, help="nodes of the job: a Ray head and N-1 workers")
    slurm.add_argument("--gpus-per-node", type=int, help="GPUs per node [none]")
    slurm.add_argument("--cpus-per-node", type=int, help="CPUs per node [whole nodes: --exclusive]")
    slurm.add_argument("--partition", help="Slurm partition [the cluster's default]")
    slurm.add_argument("--time", help="time limit, HH:MM:SS [the partition's]")
    slurm.add_argument("--account", help="Slurm account to charge")
    slurm.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    slurm.add_argument("--dry-run", action="store_true", help="print the batch script, submit nothing")
    slurm.set_defaults(handler=_slurm)


def _add_component_commands(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "check",
        help="import and try every component of a config, here and on every node of a cluster",
        description="Import the config's plugins, method, backbone (built, its width measured) and data sets (their "
        "factories imported, no data loaded) as a trial would, and print one line per component. With --address, "
        "the same on every node of that Ray cluster, the plugin modules shipped as a sweep ships them.",
    )
    check.add_argument("config", type=Path, help="YAML config")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    check.add_argument("--address", help="also check on every node of this Ray cluster: auto or HOST:PORT")
    check.set_defaults(handler=_check)

    plugins = commands.add_parser(
        "plugins",
        help="the methods, backbones and data sets sweeper knows, with their targets and sources",
        description="Every built-in, registered and entry-point component of each kind; with a CONFIG, its plugins "
        "are imported first, so the names they register show.",
    )
    plugins.add_argument("config", type=Path, nargs="?", help="a YAML config whose plugins to import first")
    plugins.set_defaults(handler=_plugins)


def _add_sweep_commands(commands: argparse._SubParsersAction) -> None:
    resume = commands.add_parser("resume", help="continue an interrupted sweep")
    resume.add_argument("sweep", help="sweep directory or URI, or sweep name under --storage-path")
    resume.add_argument("--storage-path", default="./sweeps", help="where to look for a sweep name (a path or a URI)")
    resume.add_argument("--address", help="existing Ray cluster: auto or ray://HOST:10001")
    resume.add_argument(
        "--num-samples", type=int, help="grow the sweep to this many trials (grid: repeats of the grid)"
    )
    resume.add_argument("--quiet", action="store_true", help="no progress view while the sweep runs")
    resume.add_argument("--verbose", action="store_true", help="Ray Tune's own console output instead of the view")
    resume.set_defaults(handler=_resume)

    confirm = commands.add_parser(
        "confirm",
        help="train the top configurations again with new seeds and pick on the seed means",
        description="Train the top-k configurations of the sweep's selection.rule again, each with new seeds, as "
        "trials of the same sweep (a resume: a sweep still running is refused; an interrupted one finishes first).",
    )
    confirm.add_argument("sweep", help="sweep directory or URI, or sweep name under --storage-path")
    confirm.add_argument("--storage-path", default="./sweeps", help="where to look for a sweep name (a path or a URI)")
    confirm.add_argument("--top-k", type=int, help="configurations to confirm [search.confirm.top_k, else 2]")
    confirm.add_argument("--seeds", type=int, help="new seeds per configuration [search.confirm.seeds, else 2]")
    confirm.add_argument("--address", help="existing Ray cluster: auto or ray://HOST:10001")
    confirm.add_argument("--quiet", action="store_true", help="no progress view while the trials run")
    confirm.add_argument("--verbose", action="store_true", help="Ray Tune's own console output instead of the view")
    confirm.set_defaults(handler=_confirm)

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


def _run(args: argparse.Namespace) -> int:
    from sweeper.config import load_config

    overrides = list(args.overrides) + ([f"name={args.name}"] if args.name else [])
    config = load_config(args.config, overrides=overrides)
    resume = args.resume
    claim_wait_s = 0.0
    if args.resume_if_exists:
        from sweeper.sweep import sweep_location
        from sweeper.sweep._claim import HEARTBEAT_S, STALE_AFTER_S

        resume = resume or sweep_location(config).exists()
        # A requeued job whose previous driver died on another node waits for its claim to lapse.
        claim_wait_s = STALE_AFTER_S + 2 * HEARTBEAT_S
    return _sweep_and_print(
        config, address=args.address, resume=resume, quiet=args.quiet, verbose=args.verbose, claim_wait_s=claim_wait_s
    )


def _sweep_and_print(
    config: SweeperConfig, *, address: str | None, resume: bool, quiet: bool, verbose: bool, claim_wait_s: float = 0.0
) -> int:
    from sweeper.report import format_summary
    from sweeper.sweep import run_sweep

    # Default: sweeper's own progress view; --verbose: Ray Tune's console output instead.
    progress = not (quiet or verbose)
    result = run_sweep(
        config,
        address=address,
        resume=resume,
        verbose=1 if verbose else 0,
        progress=progress,
        claim_wait_s=claim_wait_s,
    )
    print()
    print(format_summary(result.report))
    print(f"Sweep directory: {result.directory}")
    print(f"MLflow: {config.tracking.uri}, experiment {config.experiment_name!r}")
    print(f"        parent run {result.parent_run_id}")
    if result.failure is not None:
        print(f"sweeper: error: {result.failure}", file=sys.stderr)
        return EXIT_SWEEP_FAILED
    return 0


def _submit(args: argparse.Namespace) -> int:
    from sweeper.config import load_config
    from sweeper.yamlio import read_yaml

    config = load_config(args.config, overrides=args.overrides)  # fail here, not on the cluster
    runtime_env = None
    if args.runtime_env is not None:
        if not args.runtime_env.is_file():
            raise ConfigError(f"--runtime-env {args.runtime_env} not found: check the path")
        try:
            text = args.runtime_env.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--runtime-env {args.runtime_env}: cannot be read as UTF-8 text ({exc})") from None
        runtime_env = read_yaml(text, source=f"--runtime-env {args.runtime_env}")
        if not isinstance(runtime_env, dict):
            raise ConfigError(f"--runtime-env {args.runtime_env}: expected a mapping")
    from sweeper.submit import submit_sweep

    return submit_sweep(
        args.config,
        address=args.address,
        overrides=args.overrides,
        runtime_env=runtime_env,
        wait=args.wait,
        config=config,
    )


def _slurm(args: argparse.Namespace) -> int:
    from sweeper.slurm import SlurmResources, submit_slurm

    resources = SlurmResources(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        cpus_per_node=args.cpus_per_node,
        partition=args.partition,
        time=args.time,
        account=args.account,
    )
    return submit_slurm(args.config, overrides=args.overrides, resources=resources, dry_run=args.dry_run)


def _check(args: argparse.Namespace) -> int:
    from sweeper.config import load_config

    config = load_config(args.config, overrides=args.overrides)
    from sweeper.sweep import check_everywhere  # ray and tune: only once the config loaded

    beside = [args.config.expanduser().resolve().parent]
    here, nodes = check_everywhere(config, address=args.address, search_dirs=beside)
    if nodes:
        print("this machine:")
    for check in here:
        print(f"  {check.line()}" if nodes else check.line())
    for node, checks in nodes.items():
        print(f"node {node}:")
        for check in checks:
            print(f"  {check.line()}")
    where = f"here and on {len(nodes)} node(s) of {args.address}" if nodes else "here"
    print(f"{args.config}: {len(here)} component(s) import and fit {where}")
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from sweeper.config import load_config
    from sweeper.sweep import component_listing

    plugins: list[str] = []
    beside: list[Path] = []
    if args.config is not None:  # its plugins only: what they register shows, nothing else is needed
        plugins = load_config(args.config, resolve=False).plugins
        beside = [args.config.expanduser().resolve().parent]
    for line in component_listing(plugins, search_dirs=beside):
        print(line)
    return 0


def _resume(args: argparse.Namespace) -> int:
    from sweeper.sweep import load_sweep_config

    config = load_sweep_config(args.sweep, storage_path=_storage_path(args))
    if args.num_samples is not None:
        config = config.with_overrides({"search.num_samples": args.num_samples})
    return _sweep_and_print(config, address=args.address, resume=True, quiet=args.quiet, verbose=args.verbose)


def _confirm(args: argparse.Namespace) -> int:
    from sweeper.config import ConfirmConfig
    from sweeper.sweep import load_sweep_config

    config = load_sweep_config(args.sweep, storage_path=_storage_path(args))
    saved = config.search.confirm or ConfirmConfig()
    top_k = args.top_k if args.top_k is not None else saved.top_k
    seeds = args.seeds if args.seeds is not None else saved.seeds
    config = config.with_overrides({"search.confirm": {"top_k": top_k, "seeds": seeds}})
    return _sweep_and_print(config, address=args.address, resume=True, quiet=args.quiet, verbose=args.verbose)


def _status(args: argparse.Namespace) -> int:
    from sweeper.report import format_summary
    from sweeper.sweep import load_sweep_config, sweep_location, sweep_report

    config = load_sweep_config(args.sweep, storage_path=_storage_path(args))
    location = sweep_location(config)
    report = sweep_report(location, config)
    counts = report.status_counts()
    print(f"{location.uri}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    print(format_summary(report))
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
        storage_path=_storage_path(args),
        out=out,
        tracking_uri=args.tracking_uri,
        track=not args.no_tracking,
    )
    for sweep in result.reports:
        assert sweep.directory is not None
        print(format_summary(sweep))
        names = ", ".join(path.name for path in result.files[sweep.directory])
        print(f"Written to {sweep.directory}: {names}")
        print(f"MLflow: {result.tracking[sweep.directory]}")
        print()
    if result.combined:
        print(format_comparison(result.reports))
        print(f"Combined report: {out.resolve()}/ ({', '.join(path.name for path in result.combined)})")
    return 0


def _storage_path(args: argparse.Namespace) -> str:
    """``--storage-path``, refused in one line naming it when it is a URI pyarrow cannot open."""
    from sweeper.storage import check_storage_uri, is_uri

    if is_uri(args.storage_path):
        try:
            check_storage_uri(args.storage_path)
        except ValueError as exc:
            raise ConfigError(f"--storage-path {exc}") from None
    return args.storage_path


def _rankme(args: argparse.Namespace) -> int:
    from sweeper.embeddings import embedding_metrics, load_embeddings

    z = load_embeddings(args.file)
    values = embedding_metrics(z)
    if args.json:
        print(json.dumps({"file": str(args.file), "shape": list(z.shape), **values}))
    else:
        print(f"{args.file}: N={z.shape[0]} K={z.shape[1]}")
        for name, value in values.items():
            print(f"  {name:16s} {value:.6g}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
