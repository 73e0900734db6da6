"""The Ray a sweep runs on: an embedded one or an existing cluster, and the checks that refuse,
before anything is written, a cluster the sweep cannot run on."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RuntimeEnvSetupError

from sweeper.config import SweeperConfig
from sweeper.errors import SweepError
from sweeper.storage import SweepLocation

# Set by Ray's job manager in a Ray Job's driver (ray._private.runtime_env.constants).
_IN_RAY_JOB = "RAY_JOB_CONFIG_JSON_ENV_VAR"
_FIX_ADDRESS = "start the cluster, or fix --address / RAY_ADDRESS (omit both for an embedded local Ray)"


def connect(address: str | None, *, runtime_env: Mapping[str, Any] | None = None) -> bool:
    """Connect to Ray at ``address`` (else ``RAY_ADDRESS``, else an embedded local Ray);
    returns True when this call started or joined an instance, False when one was running.

    ``runtime_env`` becomes the driver's job's runtime environment, which every task and trial
    inherits: the plugin modules to ship (:func:`sweeper.sweep._check.plugin_runtime_env`).
    Inside a Ray Job (``sweeper submit``) it is not passed: the job's own runtime_env applies
    (``sweeper submit`` puts the plugins there), and Ray would only merge or refuse a second one.
    """
    if ray.is_initialized():
        return False
    env = dict(runtime_env) if runtime_env and not os.environ.get(_IN_RAY_JOB) else None
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if not address:
            # An embedded, loopback-only Ray: its start-up warnings (token auth, ...) are noise here.
            # "local": a new instance even while a `ray start` head runs on this machine, which a
            # bare ray.init() would join (and lose the sweep with, when that head is stopped).
            ray.init(address="local", include_dashboard=False, logging_level="ERROR", runtime_env=env)
            return True
        check_reachable(address)
        try:
            ray.init(address=address, logging_level="WARNING", runtime_env=env)
        except ConnectionError as exc:
            raise SweepError(
                f"cannot connect to Ray at {address!r} ({str(exc).splitlines()[0][:160]}): {_FIX_ADDRESS}"
            ) from None
    except (RuntimeEnvSetupError, ValueError) as exc:
        if env is None:
            raise
        # Packaging the plugin modules for the workers failed (too large for Ray's store, unreadable).
        ray.shutdown()
        modules = ", ".join(map(str, env.get("py_modules", [])))
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SweepError(f"cannot ship the plugin modules {modules} to the Ray workers ({first})") from None
    return True


def check_reachable(address: str, *, timeout: float = 5.0) -> None:
    """A quick TCP check, because ``ray.init`` retries an unreachable GCS for minutes."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"Ray address {address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SweepError(f"Ray address {address!r} is unreachable ({exc.strerror or exc}): {_FIX_ADDRESS}") from None


def check_cluster(config: SweeperConfig, location: SweepLocation) -> None:
    """Refuse a trial no node can host (for a data-parallel trial: a worker no node can host,
    or more workers than the whole cluster holds at once), and a node-local sweep ``location``
    on a multi-node cluster."""
    wanted = config.search.resources
    nodes = _alive_nodes()
    per = "per worker" if wanted.workers > 1 else "per trial"
    if not any(_workers_on(node, wanted.cpu, wanted.gpu) for node in nodes):
        biggest = max(((n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in nodes), default=(0, 0))
        raise SweepError(
            f"search.resources asks {wanted.cpu:g} CPU + {wanted.gpu:g} GPU {per} but the largest "
            f"node has {biggest[0]:g} CPU + {biggest[1]:g} GPU: lower search.resources or add such nodes"
        )
    if wanted.workers > 1 and concurrent_worker_groups(config) == 0:
        total_cpu = sum(node["Resources"].get("CPU", 0) for node in nodes)
        total_gpu = sum(node["Resources"].get("GPU", 0) for node in nodes)
        raise SweepError(
            f"search.resources asks {wanted.workers} workers x ({wanted.cpu:g} CPU + {wanted.gpu:g} GPU) = "
            f"{wanted.workers * wanted.cpu:g} CPU + {wanted.workers * wanted.gpu:g} GPU per trial, but the cluster "
            f"holds only {_workers_fitting(nodes, wanted.cpu, wanted.gpu)} such workers at once ({total_cpu:g} CPU "
            f"+ {total_gpu:g} GPU): lower search.resources.workers or add nodes"
        )
    if config.train.device == "cuda" and not any(node["Resources"].get("GPU", 0) for node in nodes):
        raise SweepError(
            f"train.device: 'cuda' but none of the Ray cluster's {len(nodes)} node(s) has a GPU: set train.device: "
            "auto (or cpu), or add GPU nodes"
        )
    if len(nodes) > 1 and location.is_local:  # object storage is shared by nature
        check_shared(Path(location.path).parent, nodes)


def concurrent_worker_groups(config: SweeperConfig) -> int:
    """How many data-parallel trials' worker groups the cluster holds at once: the workers that
    fit on the alive nodes (node by node), divided by ``search.resources.workers``."""
    wanted = config.search.resources
    return _workers_fitting(_alive_nodes(), wanted.cpu, wanted.gpu) // wanted.workers


def _alive_nodes() -> list[dict[str, Any]]:
    return [node for node in ray.nodes() if node.get("Alive")]


def _workers_on(node: dict[str, Any], cpu: float, gpu: float) -> int:
    """Workers of ``cpu`` CPU + ``gpu`` GPU that ``node`` can host."""
    resources = node["Resources"]
    # Ray counts resources in units of 1e-4: round so that, e.g., 3 x 0.1 CPU fit in 0.3.
    fits = math.floor(round(resources.get("CPU", 0) / cpu, 4))
    if gpu > 0:
        fits = min(fits, math.floor(round(resources.get("GPU", 0) / gpu, 4)))
    return fits


def _workers_fitting(nodes: list[dict[str, Any]], cpu: float, gpu: float) -> int:
    return sum(_workers_on(node, cpu, gpu) for node in nodes)


def check_shared(storage: Path, nodes: list[dict[str, Any]]) -> None:
    """Every node must see ``storage`` (NFS or similar) for checkpoints and resume to work."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    storage.mkdir(parents=True, exist_ok=True)
    marker = storage / f".sweeper-shared-{os.getpid()}"
    marker.write_text("shared storage check")
    try:
        probe = ray.remote(num_cpus=0)(os.path.exists)
        on_each_node = [
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            for node in nodes
        ]
        seen = ray.get([remote.remote(str(marker)) for remote in on_each_node], timeout=60)
    finally:
        marker.unlink(missing_ok=True)
    if not all(seen):
        raise SweepError(
            f"storage_path {storage} is local to this node but the cluster has {len(nodes)} nodes: "
            "use shared storage (an NFS export or a bucket mounted at the same path on every node)"
        )
