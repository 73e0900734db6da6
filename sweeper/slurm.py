"""``sweeper slurm``: run a sweep as one Slurm batch job that starts Ray on its allocation.

The batch script follows Ray's documented Slurm pattern ("Deploying on Slurm"): one task per
node, a Ray head (``ray start --head --block``) on the first node, one ``srun`` worker step
(``ray start --address HEAD --block``) on each other node, then the sweep's driver,
``sweeper run CONFIG --address HEAD``, in the batch step on the head node. At the end it stops
its own Ray steps (not ``ray stop``, which would stop every Ray of the user on the node) and
exits with the driver's status.

Requeue-safe: the driver runs with ``--resume-if-exists``, so a requeued job, or the same
sweep submitted again, resumes the sweep (finished trials kept, nothing logged twice), and
``--dependency=singleton`` keeps two jobs of one sweep from running at once. The job carries
its config (validated, overrides applied) inside the script, so editing the YAML after
submitting changes nothing for a queued or requeued job.

Plugin modules (``plugins:``, ``module:attr`` targets) that are not installed reach the job as
a ``sweeper run`` on one machine reaches them: the driver imports them and ships its copy to
every Ray worker in the job's runtime_env ``py_modules``. The job's driver, though, reads the
config from the job's own directory and runs in the submit directory, so a module that was
found beside the config, or elsewhere on this shell's ``PYTHONPATH``, would not import there: the
script puts the directories of such modules on the driver's ``PYTHONPATH``
(:func:`driver_pythonpath`; they must be visible from the head node, as the submit directory is).
Only the driver's: the workers import the copy it ships, so every trial runs the code the sweep
started with.

Ray >= 2.5x heads may demand token authentication: the job uses ``RAY_AUTH_MODE=token``
(unless the submitting environment sets another mode) with the token from ``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, and without one generates a fresh token for
the job; head, workers and driver share it through the environment ``srun`` passes on, and
it is never printed.

Checked before anything is submitted (one-line :class:`SubmitError` each): ``sbatch`` is
installed; on a multi-node job the ``storage_path`` is shared (see :func:`check_shared_storage`)
and ``tracking.uri`` is a server the head node can reach (not a sqlite file, not loopback);
every trial fits on a node of the requested size.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO
from urllib.parse import urlsplit

import yaml

from sweeper.config import SweeperConfig, load_config
from sweeper.errors import SubmitError
from sweeper.storage import is_uri, write_atomic

__all__ = [
    "SlurmResources",
    "batch_script",
    "check_shared_storage",
    "check_shared_tracking",
    "driver_pythonpath",
    "filesystem_type",
    "frozen_config",
    "slurm_directory",
    "submit_slurm",
]

# Directories that are private to each node whatever filesystem holds them.
NODE_LOCAL_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run")
# Filesystems of a node's own memory or disks: another node cannot see a path on them.
LOCAL_FILESYSTEMS = frozenset(
    {"tmpfs", "ramfs", "devtmpfs", "overlay", "squashfs", "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs",
     "vfat", "exfat", "ntfs", "ntfs3"}
)  # fmt: skip
_SLURM_TIME = re.compile(r"^\d+(-\d{1,2}(:\d{2}){0,2}|(:\d{2}){1,2})?$")  # MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
_SLURM_WORD = re.compile(r"^[A-Za-z0-9._,:+-]+$")  # partition and account names
_CONFIG_END = "SWEEPER_CONFIG_END"


@dataclass(frozen=True, kw_only=True)
class SlurmResources:
    """What the job asks Slurm for: ``nodes`` whole nodes, or ``cpus_per_node`` CPUs on each."""

    nodes: int = 1
    gpus_per_node: int | None = None
    cpus_per_node: int | None = None
    partition: str | None = None
    time: str | None = None  # Slurm's --time: HH:MM:SS, MM, D-HH:MM:SS, ...
    account: str | None = None

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise SubmitError(f"--nodes {self.nodes}: a job needs at least 1 node")
        for flag, count in (("--gpus-per-node", self.gpus_per_node), ("--cpus-per-node", self.cpus_per_node)):
            if count is not None and count < (0 if flag == "--gpus-per-node" else 1):
                raise SubmitError(f"{flag} {count}: give a positive number")
        if self.time is not None and not _SLURM_TIME.match(self.time):
            raise SubmitError(f"--time {self.time!r}: write it as HH:MM:SS (or Slurm's MM, D-HH:MM:SS)")
        for flag, word in (("--partition", self.partition), ("--account", self.account)):
            if word is not None and not _SLURM_WORD.match(word):
                raise SubmitError(f"{flag} {word!r}: not a Slurm name (letters, digits, '.', '_', '-')")


def submit_slurm(
    config_path: Path,
    *,
    overrides: Sequence[str] = (),
    resources: SlurmResources,
    dry_run: bool = False,
    out: TextIO | None = None,
) -> int:
    """Write the batch script of ``config_path`` into :func:`slurm_directory` and submit it
    with ``sbatch``, printing the job id (``dry_run``: print the script, write nothing).

    Raises :class:`SubmitError` (after the config's own :class:`ConfigError`) before anything
    is written when a check fails or ``sbatch`` refuses the job.
    """
    out = out or sys.stdout
    config = frozen_config(load_config(config_path, overrides=overrides))
    check_shared_storage(config.storage_path, nodes=resources.nodes)
    check_shared_tracking(config.tracking.uri, nodes=resources.nodes)
    _check_fits(config, resources)
    directory = slurm_directory(config)
    workdir = Path.cwd()
    plugin_dirs = driver_pythonpath(config, workdir=workdir, search_dirs=[config_path.expanduser().resolve().parent])
    script = batch_script(
        config, resources, directory=directory, workdir=workdir, bin_dir=_bin_dir(), plugin_dirs=plugin_dirs
    )
    if dry_run:
        out.write(script)
        return 0
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SubmitError("sbatch not found: run sweeper slurm on a Slurm login node (or put sbatch on PATH)")
    directory.mkdir(parents=True, exist_ok=True)
    script_file = directory / "job.sbatch"
    write_atomic(script_file, script)
    job_id = _sbatch(sbatch, script_file)
    print(f"submitted batch job {job_id}", file=out)
    print(f"  sweep {config.name!r} on {resources.nodes} node(s); log: {directory}/slurm-{job_id}.out", file=out)
    print(f"  follow it with: squeue --job {job_id}; tail -f {directory}/slurm-{job_id}.out", file=out)
    return 0


def frozen_config(config: SweeperConfig) -> SweeperConfig:
    """``config`` with a local ``storage_path`` and a ``sqlite:///`` tracking file made
    absolute (against the current directory), so the job finds them wherever it starts."""
    changes: dict[str, str] = {}
    if not is_uri(config.storage_path):
        changes["storage_path"] = str(Path(config.storage_path).expanduser().resolve())
    uri = config.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        changes["tracking.uri"] = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).expanduser().resolve()}"
    return config.with_overrides(changes) if changes else config


def driver_pythonpath(config: SweeperConfig, *, workdir: Path, search_dirs: Sequence[Path] = ()) -> list[Path]:
    """The directories the job's driver needs on ``PYTHONPATH``: those holding the plugin
    modules to ship (:func:`sweeper.sweep.plugin_runtime_env`), except ``workdir``, where the
    driver runs and finds a module by name (``search_dirs``: where the config's modules were
    looked for, its own directory)."""
    from sweeper.sweep import plugin_runtime_env

    shipped = (plugin_runtime_env(config, search_dirs=search_dirs) or {}).get("py_modules", [])
    parents = dict.fromkeys(Path(module).parent for module in shipped)
    return [parent for parent in parents if parent != workdir.resolve()]


def slurm_directory(config: SweeperConfig, *, workdir: Path | None = None) -> Path:
    """Where the job's script, config and log go: ``<storage_path>/<name>.slurm/``, beside the
    sweep directory (which must not exist before the sweep starts); for a URI ``storage_path``
    (``s3://...``, no place for Slurm's log), ``<name>.slurm/`` in ``workdir`` (the current
    directory, where the job starts, as Slurm's own logs do)."""
    if is_uri(config.storage_path):
        return (workdir or Path.cwd()).absolute() / f"{config.name}.slurm"
    return Path(config.storage_path).expanduser().resolve() / f"{config.name}.slurm"


def check_shared_storage(storage_path: str, *, nodes: int, mounts: str | None = None) -> None:
    """Refuse a ``storage_path`` that the nodes of a multi-node job cannot all see.

    The rule: a URI (``s3://``, ``gs://``, ...) is shared by nature; a local path (resolved
    against the current directory, as the job will) must not lie under a node-local directory
    (:data:`NODE_LOCAL_DIRS`, ``$TMPDIR``) nor on a filesystem of the node's own memory or disks
    (:data:`LOCAL_FILESYSTEMS`, read from ``/proc/mounts``, or ``mounts``); network and
    cluster filesystems (NFS, Lustre, GPFS, BeeGFS, CephFS, ...) pass. A one-node job may use
    any path. At run time ``sweeper run`` also checks that every Ray node sees the directory.
    """
    if nodes <= 1 or is_uri(storage_path):
        return
    path = Path(storage_path).expanduser().resolve()
    fix = (
        f"but the job has {nodes} nodes: use a directory on shared storage that every node mounts at the same "
        "path (NFS, Lustre, GPFS, BeeGFS, CephFS) or a bucket (s3://...)"
    )
    local_dirs = [*NODE_LOCAL_DIRS, *([os.environ["TMPDIR"]] if os.environ.get("TMPDIR", "/") != "/" else [])]
    for directory in local_dirs:
        if path.is_relative_to(Path(directory).resolve()):
            raise SubmitError(f"storage_path {path} is under {directory}, which is private to each node, {fix}")
    filesystem = filesystem_type(path, mounts=mounts)
    if filesystem in LOCAL_FILESYSTEMS:
        raise SubmitError(f"storage_path {path} is on {filesystem}, a node's own disk or memory, {fix}")


def filesystem_type(path: Path, *, mounts: str | None = None) -> str | None:
    """The type of the filesystem holding ``path`` (the longest mount point above it in
    ``/proc/mounts``, or ``mounts`` in that format); None when unknown."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    best: tuple[int, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # /proc/mounts escapes spaces, tabs and backslashes in mount points as octal.
        point = PurePosixPath(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1]))
        if PurePosixPath(path).is_relative_to(point) and (best is None or len(point.parts) >= best[0]):
            best = (len(point.parts), fields[2])
    return None if best is None else best[1]


def check_shared_tracking(uri: str, *, nodes: int) -> None:
    """Refuse, on a multi-node job, a tracking store the sweep's driver cannot share: a sqlite
    or file store (the driver runs on whichever node Slurm makes the head; sqlite on network
    filesystems is unsafe) or a server on loopback (that would be the head node itself)."""
    if nodes <= 1:
        return
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else "file"
    if scheme in {"sqlite", "file"}:
        raise SubmitError(
            f"tracking.uri {uri} is a local file but the job has {nodes} nodes: run an MLflow server the "
            "nodes can reach and set tracking.uri=http://HOST:5000"
        )
    host = (urlsplit(uri).hostname or "").lower()
    if host in {"localhost", "::1"} or host.startswith("127."):
        raise SubmitError(
            f"tracking.uri {uri} names loopback, which on the job is the head node, not this one: "
            "give the tracking server's host name"
        )


def _check_fits(config: SweeperConfig, resources: SlurmResources) -> None:
    wanted = config.search.resources
    if resources.cpus_per_node is not None and wanted.cpu > resources.cpus_per_node:
        raise SubmitError(
            f"search.resources asks {wanted.cpu:g} CPUs per trial but --cpus-per-node is "
            f"{resources.cpus_per_node}: raise --cpus-per-node or lower search.resources.cpu"
        )
    if wanted.gpu > (resources.gpus_per_node or 0):
        raise SubmitError(
            f"search.resources asks {wanted.gpu:g} GPU per trial but the job asks "
            f"{resources.gpus_per_node or 0} GPUs per node: pass --gpus-per-node"
        )


def _bin_dir() -> Path:
    # Not resolved: a virtual environment's python is a symlink out of it.
    return Path(sys.executable).absolute().parent


def _sbatch(sbatch: str, script: Path) -> str:
    try:
        done = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise SubmitError("sbatch did not answer in 120 s: check that slurmctld is up (sinfo)") from None
    if done.returncode != 0:
        reason = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()[-1]
        raise SubmitError(f"sbatch refused the job: {reason}")
    return done.stdout.strip().split(";")[0]  # --parsable: "<id>[;<cluster>]"


def batch_script(
    config: SweeperConfig,
    resources: SlurmResources,
    *,
    directory: Path,
    workdir: Path,
    bin_dir: Path,
    plugin_dirs: Sequence[Path] = (),
) -> str:
    """The batch script: ``#SBATCH`` options, the config, then :data:`_BODY` (Ray's pattern);
    ``plugin_dirs`` go on the driver's ``PYTHONPATH`` (:func:`driver_pythonpath`)."""
    for path in (directory, workdir, bin_dir):
        if re.search(r"\s", str(path)):  # #SBATCH lines are split at whitespace
            raise SubmitError(f"{path}: a path with whitespace cannot go into #SBATCH lines; use another directory")
    for path in plugin_dirs:
        if os.pathsep in str(path):
            raise SubmitError(f"{path}: a plugin directory with {os.pathsep!r} cannot go on PYTHONPATH; move it")
    options = [
        f"--job-name=sweeper-{config.name}",
        f"--nodes={resources.nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={resources.cpus_per_node}" if resources.cpus_per_node else "--exclusive",
    ]
    if resources.gpus_per_node:
        options.append(f"--gpus-per-node={resources.gpus_per_node}")
    options += [f"--{flag}={value}" for flag, value in _optional(resources) if value is not None]
    options += [
        f"--chdir={workdir}",
        f"--output={directory}/slurm-%j.out",
        "--open-mode=append",  # a requeued job appends to its log
        "--requeue",
        "--dependency=singleton",  # one job of this sweep at a time
    ]
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    if _CONFIG_END in text.splitlines():
        raise SubmitError(f"the config contains a line {_CONFIG_END!r}, which ends the script's config block")
    variables = {
        "SWEEPER_BIN": str(bin_dir),
        "SWEEPER_SLURM_DIR": str(directory),
        "SWEEPER_GPUS": str(resources.gpus_per_node) if resources.gpus_per_node is not None else "",
        "SWEEPER_DRIVER_PYTHONPATH": os.pathsep.join(str(path) for path in plugin_dirs),
    }
    header = [
        "#!/bin/bash",
        f"# Written by `sweeper slurm` for the sweep {config.name!r}. Submitting it again (sbatch, or",
        "# sweeper slurm with the same config) resumes the sweep; so does a requeue.",
        *(f"#SBATCH {option}" for option in options),
        "",
        *(f"{name}={shlex.quote(value)}" for name, value in variables.items()),
        'CONFIG="$SWEEPER_SLURM_DIR/config-$SLURM_JOB_ID.yaml"',
        f"cat > \"$CONFIG\" <<'{_CONFIG_END}'",
        text.rstrip("\n"),
        _CONFIG_END,
    ]
    return "\n".join(header) + "\n" + _BODY


def _optional(resources: SlurmResources) -> list[tuple[str, str | None]]:
    return [("partition", resources.partition), ("time", resources.time), ("account", resources.account)]


_BODY = r"""
set -uo pipefail
export SWEEPER_BIN PATH="$SWEEPER_BIN:$PATH" SWEEPER_GPUS
# N distinct free ports of this node (bound together, so no two are the same).
export SWEEPER_FREE_PORTS='import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets: s.bind(("", 0))
print(*(s.getsockname()[1] for s in sockets))'

# Token authentication (Ray >= 2.5x): head, workers and driver share the mode and one token;
# without a token the job makes its own. Never printed.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ] \
        && [ ! -s "${RAY_AUTH_TOKEN_PATH:-${HOME:-}/.ray/auth_token}" ]; then
    RAY_AUTH_TOKEN=$("$SWEEPER_BIN/python" -c 'import secrets; print(secrets.token_hex(32))')
    export RAY_AUTH_TOKEN
fi

# The batch step runs on the first node, the Ray head; a one-node job's driver reaches it on loopback.
mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
if [ "${#nodes[@]}" -eq 1 ]; then
    head_ip=127.0.0.1
else
    head_ip=$(hostname --ip-address | tr ' ' '\n' | grep -v -e '^127\.' -e ':' | head -n 1)
    [ -n "$head_ip" ] || head_ip=$(hostname -I | awk '{print $1}')
fi
read -r gcs_port SWEEPER_CLIENT_PORT SWEEPER_DASHBOARD_PORT SWEEPER_AGENT_PORT \
    < <("$SWEEPER_BIN/python" -c "$SWEEPER_FREE_PORTS" 4)
export SWEEPER_RAY_HEAD="$head_ip:$gcs_port" SWEEPER_CLIENT_PORT SWEEPER_DASHBOARD_PORT SWEEPER_AGENT_PORT
# The job's own Ray directory on each node: Ray's logs stay there, and `ray start` records its
# address there instead of in /tmp/ray, where a later `ray.init()` would find it.
export SWEEPER_RAY_TMP="/tmp/ray-$SLURM_JOB_ID"

ray_steps=()
driver=
stop_ray() {
    local status=$?
    trap - EXIT TERM INT
    if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
        kill -TERM "$driver" 2>/dev/null
        wait "$driver"
    fi
    # srun passes SIGTERM to its step: `ray start --block` then stops that node's Ray.
    [ "${#ray_steps[@]}" -eq 0 ] || kill -TERM "${ray_steps[@]}" 2>/dev/null
    for _ in $(seq 60); do
        alive=0
        for step in "${ray_steps[@]}"; do kill -0 "$step" 2>/dev/null && alive=1; done
        [ "$alive" -eq 1 ] || break
        sleep 1
    done
    [ "${#ray_steps[@]}" -eq 0 ] || kill -KILL "${ray_steps[@]}" 2>/dev/null
    echo "sweeper: Ray stopped; the sweep's exit status is $status"
    exit "$status"
}
trap stop_ray EXIT
trap 'exit 143' TERM INT

echo "sweeper: Ray head on ${nodes[0]} at $SWEEPER_RAY_HEAD, ${#nodes[@]} node(s), logs in $SWEEPER_RAY_TMP"
# Each step asks for the whole node (all its CPUs and GPUs); the head node's ports are picked above.
srun --nodes=1 --ntasks=1 --whole -w "${nodes[0]}" bash -c 'exec "$SWEEPER_BIN/ray" start --head --block \
    --disable-usage-stats --temp-dir="$SWEEPER_RAY_TMP" --node-ip-address="${SWEEPER_RAY_HEAD%:*}" \
    --port="${SWEEPER_RAY_HEAD##*:}" --num-cpus="$SLURM_CPUS_ON_NODE" ${SWEEPER_GPUS:+--num-gpus="$SWEEPER_GPUS"} \
    --ray-client-server-port="$SWEEPER_CLIENT_PORT" --dashboard-host=127.0.0.1 \
    --dashboard-port="$SWEEPER_DASHBOARD_PORT" --dashboard-agent-listen-port="$SWEEPER_AGENT_PORT"' &
ray_steps+=($!)
for node in "${nodes[@]:1}"; do
    srun --nodes=1 --ntasks=1 --whole -w "$node" bash -c 'exec "$SWEEPER_BIN/ray" start --block \
        --disable-usage-stats --temp-dir="$SWEEPER_RAY_TMP" --address="$SWEEPER_RAY_HEAD" \
        --num-cpus="$SLURM_CPUS_ON_NODE" ${SWEEPER_GPUS:+--num-gpus="$SWEEPER_GPUS"} \
        --dashboard-agent-listen-port="$("$SWEEPER_BIN/python" -c "$SWEEPER_FREE_PORTS" 1)"' &
    ray_steps+=($!)
done

# Wait (bounded) for the head to answer and every node to join.
"$SWEEPER_BIN/python" - "$SWEEPER_RAY_HEAD" "${#nodes[@]}" "${ray_steps[0]}" <<'PY' || exit 1
import socket, sys, time
address, wanted, head_step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
host, port = address.rsplit(":", 1)
deadline = time.monotonic() + 300
def running(pid):
    try:  # a zombie has ended too
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
def waiting(what):
    if not running(head_step):  # Ray failed to start on the head: its error is above
        sys.exit(f"sweeper: the Ray head's step ended; {what}")
    if time.monotonic() > deadline:
        sys.exit(f"sweeper: {what} after 300 s")
    time.sleep(1)
while True:
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        break
    except OSError:
        waiting(f"the Ray head at {address} does not answer")
import ray
ray.init(address=address, logging_level="ERROR")
while (alive := sum(node["Alive"] for node in ray.nodes())) < wanted:
    waiting(f"only {alive} of {wanted} Ray nodes joined")
PY

# Requeue-safe: a sweep that exists (requeued or resubmitted job) is resumed, never rerun. The
# plugin directories go first on the driver's PYTHONPATH (only the driver's: it ships them to Ray).
PYTHONPATH="$SWEEPER_DRIVER_PYTHONPATH${PYTHONPATH:+${SWEEPER_DRIVER_PYTHONPATH:+:}$PYTHONPATH}" \
    "$SWEEPER_BIN/sweeper" run "$CONFIG" --address "$SWEEPER_RAY_HEAD" --resume-if-exists &
driver=$!
wait "$driver"
status=$?
driver=
exit "$status"
"""
