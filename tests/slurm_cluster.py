"""A real one-node Slurm the tests start and stop: Debian's ``slurm-wlm`` (``slurmctld`` +
``slurmd``) authenticated by its own ``munged``, on loopback, with a private ``slurm.conf``,
spool and state directories in a temporary directory.

Nothing touches the machine's Slurm or munge configuration: the client commands (``sbatch``,
``scontrol``, ...) find this cluster through ``SLURM_CONF``, which :func:`slurm_cluster` puts
into the environment it yields. Every daemon runs in the foreground in its own session and is
killed on exit, jobs first.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
TERMINAL_STATES = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT",
}  # fmt: skip


def slurm_missing() -> str | None:
    """Why a Slurm cluster cannot be started here (None: it can)."""
    missing = [name for name in (*DAEMONS, "sbatch", "scontrol", "scancel") if _which(name) is None]
    if missing:
        return f"{', '.join(missing)} not installed: apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs"
    return None


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


@dataclass(frozen=True)
class SlurmCluster:
    root: Path
    env: dict[str, str]  # os.environ + SLURM_CONF: the client commands' environment
    node: str

    def scontrol(self, *args: str, timeout: float = 30) -> str:
        done = subprocess.run(
            [_which("scontrol") or "scontrol", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"scontrol {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def job_state(self, job_id: str) -> dict[str, str]:
        """The job's fields (``JobState``, ``ExitCode``, ``StdOut``, ...) as ``scontrol`` shows them."""
        line = self.scontrol("show", "job", "--oneliner", job_id).strip()
        return dict(field.split("=", 1) for field in line.split() if "=" in field)

    def wait_job(self, job_id: str, *, timeout: float) -> dict[str, str]:
        """Wait until the job ends (completed, failed, ...) and return its fields."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.job_state(job_id)
            if state.get("JobState") in TERMINAL_STATES:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"Slurm job {job_id} still {state.get('JobState')} after {timeout} s")
            time.sleep(1)


@contextmanager
def slurm_cluster(*, cpus: int = 2, timeout: float = 90) -> Iterator[SlurmCluster]:
    """A one-node Slurm cluster on 127.0.0.1, its node named after this host (slurmd finds
    itself by name), ``cpus`` CPUs; stopped, jobs first, on exit."""
    # Short and private: munge refuses a socket directory others can write to.
    root = Path(tempfile.mkdtemp(prefix="sweeper-slurm-"))
    node = socket.gethostname().split(".")[0]
    key = root / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o600)
    config = _write_config(root, node=node, cpus=cpus)
    env = {**os.environ, "SLURM_CONF": str(config)}
    daemons: list[subprocess.Popen] = []
    cluster = SlurmCluster(root, env, node)
    try:
        daemons.append(
            _start(
                root,
                "munged",
                "--foreground",
                "--force",
                f"--socket={root / 'munge.socket'}",
                f"--key-file={key}",
                f"--pid-file={root / 'munged.pid'}",
                f"--seed-file={root / 'munged.seed'}",
                f"--log-file={root / 'munged.log'}",
            )
        )
        _wait_for(lambda: (root / "munge.socket").exists(), "munged's socket", timeout, root)
        daemons.append(_start(root, "slurmctld", "-D", "-i", "-f", str(config), env=env))
        daemons.append(_start(root, "slurmd", "-D", "-f", str(config), "-N", node, env=env))
        _wait_for(lambda: _node_idle(cluster), "the node to become idle", timeout, root)
        yield cluster
    finally:
        with suppress(Exception):
            subprocess.run([_which("scancel") or "scancel", "--full", f"--user={os.getuid()}"], env=env, timeout=30)
            _wait_for(lambda: not _jobs(cluster), "the jobs to end", 60, root)
        for daemon in reversed(daemons):
            _stop(daemon)
        shutil.rmtree(root, ignore_errors=True)


def _write_config(root: Path, *, node: str, cpus: int) -> Path:
    for name in ("state", "spool"):
        (root / name).mkdir()
    (root / "plugstack.conf").write_text("")
    (root / "cgroup.conf").write_text("")
    lines = {
        "ClusterName": "sweepertest",
        "SlurmctldHost": f"{node}(127.0.0.1)",
        "SlurmctldPort": str(free_port()),
        "SlurmdPort": str(free_port()),
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={root / 'munge.socket'}",
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "StateSaveLocation": str(root / "state"),
        "SlurmdSpoolDir": str(root / "spool"),
        "SlurmctldPidFile": str(root / "slurmctld.pid"),
        "SlurmdPidFile": str(root / "slurmd.pid"),
        "SlurmctldLogFile": str(root / "slurmctld.log"),
        "SlurmdLogFile": str(root / "slurmd.log"),
        "PlugStackConfig": str(root / "plugstack.conf"),
        # No cgroups in a container: track job processes by their parent pids, bind nothing.
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "MpiDefault": "none",
        "SchedulerType": "sched/backfill",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_CPU",
        "ReturnToService": "2",
        "SlurmdTimeout": "300",
        "MinJobAge": "600",  # finished jobs stay visible to `scontrol show job` for the test
        "KillWait": "10",
        "NodeName": f"{node} NodeAddr=127.0.0.1 NodeHostname={node} CPUs={cpus} State=UNKNOWN",
        "PartitionName": "debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    }
    config = root / "slurm.conf"
    config.write_text("".join(f"{key}={value}\n" for key, value in lines.items()))
    return config


def _start(root: Path, daemon: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    with (root / f"{daemon}.out").open("ab") as output:
        return subprocess.Popen(
            [_which(daemon) or daemon, *args],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


def _node_idle(cluster: SlurmCluster) -> bool:
    try:
        return "IDLE" in cluster.scontrol("show", "node", cluster.node, timeout=10).split("State=", 1)[1].split()[0]
    except (RuntimeError, IndexError, subprocess.TimeoutExpired):
        return False


def _jobs(cluster: SlurmCluster) -> list[str]:
    shown = cluster.scontrol("show", "job", "--oneliner", timeout=10)
    return [line for line in shown.splitlines() if "JobState=" in line and not _ended(line)]


def _ended(line: str) -> bool:
    return line.split("JobState=", 1)[1].split()[0] in TERMINAL_STATES


def _wait_for(ready: Callable[[], bool], what: str, timeout: float, root: Path) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            logs = "".join(
                f"\n--- {log.name}\n{log.read_text(errors='replace')[-1500:]}" for log in sorted(root.glob("*.log"))
            )
            raise TimeoutError(f"Slurm test cluster: waited {timeout} s for {what}{logs}")
        time.sleep(0.5)
