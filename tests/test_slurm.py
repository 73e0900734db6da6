"""`sweeper slurm`: the batch script, the checks before submitting, and a real Slurm job.

The fast tests read the generated script and run the checks; ``sbatch`` is replaced by a stub
where the submission itself is under test. The slow test submits a real digits sweep to a
one-node Slurm cluster on loopback (``tests/slurm_cluster.py``), twice.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sweeper.cli import main
from sweeper.config import load_config
from sweeper.errors import SubmitError
from sweeper.slurm import (
    SlurmResources,
    batch_script,
    check_shared_storage,
    check_shared_tracking,
    filesystem_type,
    frozen_config,
    slurm_directory,
)
from tests.helpers import tiny_config_data
from tests.slurm_cluster import slurm_cluster, slurm_missing

BIN = Path(sys.executable).parent
KEY = "method.params.cov_weight"


def _config_file(tmp_path: Path, **changes) -> Path:
    data = tiny_config_data(tmp_path, name="slurm-digits")
    data["search"]["space"][KEY]["values"] = [0.0, 4.0]
    data["train"]["epochs"] = 1
    data["evaluation"] |= {"oracle": ["knn"], "rankme_samples": 500}
    data |= changes
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _dry_run(tmp_path: Path, capsys, *args: str) -> str:
    code = main(["slurm", str(_config_file(tmp_path)), "--dry-run", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def _sbatch_options(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def _embedded_config(script: str) -> dict:
    block = script.split("<<'SWEEPER_CONFIG_END'\n", 1)[1].split("\nSWEEPER_CONFIG_END\n", 1)[0]
    return yaml.safe_load(block)


# ------------------------------------------------------------------ the script


def test_dry_run_prints_the_batch_script_and_writes_nothing(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    script = _dry_run(
        tmp_path, capsys, "--nodes", "1", "--gpus-per-node", "2", "--cpus-per-node", "8",
        "--partition", "gpu", "--time", "04:00:00", "--account", "ssl", "--set", "train.epochs=3",
    )  # fmt: skip
    directory = tmp_path / "sweeps" / "slurm-digits.slurm"
    assert _sbatch_options(script) == [
        "--job-name=sweeper-slurm-digits",
        "--nodes=1",
        "--ntasks-per-node=1",
        "--cpus-per-task=8",
        "--gpus-per-node=2",
        "--partition=gpu",
        "--time=04:00:00",
        "--account=ssl",
        f"--chdir={tmp_path}",
        f"--output={directory}/slurm-%j.out",
        "--open-mode=append",
        "--requeue",
        "--dependency=singleton",
    ]
    # The job carries the validated config, overrides applied, paths made absolute.
    expected = load_config(tmp_path / "config.yaml", overrides=["train.epochs=3"]).to_dict()
    expected["storage_path"] = str(tmp_path / "sweeps")
    assert _embedded_config(script) == expected
    assert f"SWEEPER_BIN={BIN}\n" in script and "SWEEPER_GPUS=2\n" in script
    assert '"$SWEEPER_BIN/sweeper" run "$CONFIG" --address "$SWEEPER_RAY_HEAD" --resume-if-exists' in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert not (tmp_path / "sweeps").exists()  # a dry run writes nothing


def test_whole_nodes_without_cpus_per_node(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = tiny_config_data(tmp_path, name="multi")
    data["tracking"]["uri"] = "http://mlflow.cluster:5000"
    data["storage_path"] = "s3://bucket/sweeps"
    (tmp_path / "multi.yaml").write_text(yaml.safe_dump(data))
    assert main(["slurm", str(tmp_path / "multi.yaml"), "--nodes", "4", "--dry-run"]) == 0
    script = capsys.readouterr().out
    options = _sbatch_options(script)
    assert "--exclusive" in options and "--nodes=4" in options
    assert not any(o.startswith(("--cpus-per-task", "--gpus-per-node", "--partition", "--time")) for o in options)
    assert "SWEEPER_GPUS=''\n" in script  # Ray detects the GPUs Slurm gives each step
    assert _embedded_config(script)["storage_path"] == "s3://bucket/sweeps"


def test_plugins_outside_the_submit_directory_go_on_the_drivers_pythonpath(tmp_path, capsys, monkeypatch) -> None:
    """The job's driver reads its config from the job's directory and runs in the submit
    directory: a plugin found beside the config, or elsewhere on this shell's sys.path, would not
    import there. The script puts their directories, and only theirs, first on the driver's
    PYTHONPATH (the driver ships them to the workers)."""
    work, configs, lib = tmp_path / "work", tmp_path / "configs", tmp_path / "lib"
    for directory in (work, configs, lib / "slurm_far_plugin"):
        directory.mkdir(parents=True)
    (work / "slurm_local_plugin.py").write_text("WHERE = 'the submit directory'\n")
    (configs / "slurm_beside_plugin.py").write_text("WHERE = 'beside the config'\n")
    (lib / "slurm_far_plugin" / "__init__.py").write_text("WHERE = 'on sys.path'\n")
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(lib))
    data = tiny_config_data(tmp_path, name="slurm-plugins")
    data["plugins"] = ["slurm_local_plugin", "slurm_beside_plugin", "slurm_far_plugin"]
    (configs / "sweep.yaml").write_text(yaml.safe_dump(data))

    assert main(["slurm", str(configs / "sweep.yaml"), "--nodes", "1", "--dry-run"]) == 0
    script = capsys.readouterr().out

    assert f"SWEEPER_DRIVER_PYTHONPATH={configs}:{lib}\n" in script  # not the submit directory
    assert _embedded_config(script)["plugins"] == data["plugins"]
    # The driver's line as the job runs it: in the submit directory, with the user's PYTHONPATH.
    variable = next(line for line in script.splitlines() if line.startswith("SWEEPER_DRIVER_PYTHONPATH="))
    driver = script[script.index('PYTHONPATH="$SWEEPER_DRIVER_PYTHONPATH') :].split(" \\\n", 1)[0]
    probe = (
        "import importlib.util, os; print(os.environ['PYTHONPATH']); "
        "print(*(importlib.util.find_spec(m).origin for m in ('slurm_beside_plugin', 'slurm_far_plugin')))"
    )
    command = f"set -u; {variable}; {driver} {shlex.quote(sys.executable)} -c {shlex.quote(probe)}"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": "/users/own/path"}
    done = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{configs}:{lib}:/users/own/path",
        f"{configs / 'slurm_beside_plugin.py'} {lib / 'slurm_far_plugin' / '__init__.py'}",
    ]


@pytest.mark.parametrize("nodes", [1, 3])
def test_the_script_runs_ray_as_documented(tmp_path, nodes) -> None:
    """A Ray head on the first node, one srun worker step on each other node, the driver on the
    head; run here against a stub srun/scontrol/sweeper that record what they were asked."""
    stubs, log = tmp_path / "bin", tmp_path / "calls.log"
    stubs.mkdir()
    hosts = [f"node{i}" for i in range(nodes)]

    def stub(name: str, body: str) -> None:
        # One line per call: newlines in the arguments become spaces.
        (stubs / name).write_text(f'#!/bin/bash\nargs="$*"\necho "{name} ${{args//$\'\\n\'/ }}" >> {log}\n{body}\n')
        (stubs / name).chmod(0o755)

    stub("scontrol", "printf '%s\\n' " + " ".join(hosts))
    stub("srun", "exec sleep 30")  # a blocking Ray step, stopped by the script at the end
    stub("sweeper", "exit 7")  # the driver's status becomes the job's
    # Free ports (python -c), and the wait for the Ray nodes: long enough for every step to start.
    stub("python", 'if [ "$1" = -c ]; then echo 6379 6380 6381 6382; else sleep 1; fi')
    stub("hostname", "echo 10.0.0.1")
    config = frozen_config(load_config(_config_file(tmp_path)))
    script = batch_script(
        config, SlurmResources(nodes=nodes), directory=tmp_path / "slurm", workdir=tmp_path, bin_dir=stubs
    )
    (tmp_path / "slurm").mkdir()
    env = {
        **os.environ,
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "77",
        "SLURM_JOB_NODELIST": "node[0-2]",
        "SLURM_CPUS_ON_NODE": "4",
        "HOME": str(tmp_path),
    }
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_AUTH_MODE", None)
    started = time.monotonic()
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 7, done.stdout + done.stderr
    assert time.monotonic() - started < 20  # the blocking Ray steps were stopped, not waited for
    calls = log.read_text().splitlines()
    # The steps start in the background, so they log in any order.
    sruns = {call.split(" -w ", 1)[1].split()[0]: call for call in calls if call.startswith("srun ")}
    assert sorted(sruns) == hosts
    for host, call in sruns.items():
        assert call.startswith(f"srun --nodes=1 --ntasks=1 --whole -w {host} bash -c ")
        if host == hosts[0]:
            assert "start --head --block" in call
        else:
            assert '--address="$SWEEPER_RAY_HEAD"' in call and "--head" not in call
    (driver,) = [call for call in calls if call.startswith("sweeper ")]
    head = "127.0.0.1" if nodes == 1 else "10.0.0.1"
    assert re.fullmatch(
        rf"sweeper run {tmp_path}/slurm/config-77\.yaml --address {head}:\d+ --resume-if-exists", driver
    )
    assert yaml.safe_load((tmp_path / "slurm" / "config-77.yaml").read_text()) == config.to_dict()
    assert "sweep's exit status is 7" in done.stdout


# ------------------------------------------------------------------ checks before submitting


def test_multi_node_storage_must_be_shared(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TMPDIR", raising=False)
    for local in ("/tmp/sweeps", "/dev/shm/sweeps", "/var/tmp/x"):
        with pytest.raises(SubmitError, match=r"private to each node, but the job has 2 nodes"):
            check_shared_storage(local, nodes=2)
        check_shared_storage(local, nodes=1)  # one node: any path
    check_shared_storage("s3://bucket/sweeps", nodes=8)
    monkeypatch.setenv("TMPDIR", "/local/job42")  # a node-local scratch directory Slurm sets
    with pytest.raises(SubmitError, match="is under /local/job42, which is private to each node"):
        check_shared_storage("/local/job42/sweeps", nodes=2)
    mounts = (
        "/dev/vda / ext4 rw 0 0\n"
        "nfs1:/export/home /home nfs4 rw,vers=4.2 0 0\n"
        "lustre@o2ib:/scratch /scratch lustre rw 0 0\n"
        "/dev/nvme0n1 /scratch/local xfs rw 0 0\n"
        "server:/a\\040b /mnt/a\\040b nfs rw 0 0\n"
    )
    assert filesystem_type(Path("/home/me/sweeps"), mounts=mounts) == "nfs4"
    assert filesystem_type(Path("/scratch/local/x"), mounts=mounts) == "xfs"  # the longest mount point wins
    assert filesystem_type(Path("/mnt/a b/sweeps"), mounts=mounts) == "nfs"  # octal escapes decoded
    check_shared_storage("/home/me/sweeps", nodes=2, mounts=mounts)
    check_shared_storage("/scratch/team/sweeps", nodes=2, mounts=mounts)
    for local in ("/scratch/local/sweeps", "/opt/sweeps"):
        with pytest.raises(SubmitError, match=r"is on (xfs|ext4), a node's own disk or memory"):
            check_shared_storage(local, nodes=2, mounts=mounts)


def test_multi_node_tracking_must_be_a_server_the_nodes_reach() -> None:
    for uri in ("sqlite:///mlflow.db", "sqlite:////shared/mlflow.db"):
        check_shared_tracking(uri, nodes=1)
        with pytest.raises(SubmitError, match="is a local file but the job has 3 nodes"):
            check_shared_tracking(uri, nodes=3)
    for uri in ("http://localhost:5000", "http://127.0.0.1:5000", "https://[::1]:5000"):
        with pytest.raises(SubmitError, match="names loopback"):
            check_shared_tracking(uri, nodes=2)
    check_shared_tracking("http://mlflow.cluster:5000", nodes=2)
    check_shared_tracking("postgresql://mlflow@db.cluster/mlflow", nodes=2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "0"], "--nodes 0: a job needs at least 1 node"),
        (["--nodes", "1", "--time", "4h"], "--time '4h': write it as HH:MM:SS"),
        (["--nodes", "1", "--partition", "gpu\n#SBATCH --x"], "--partition 'gpu\\n#SBATCH --x': not a Slurm name"),
        (["--nodes", "1", "--cpus-per-node", "0"], "--cpus-per-node 0: give a positive number"),
        (["--nodes", "1", "--set", "search.resources.gpu=1"], "asks 1 GPU per trial but the job asks 0 GPUs"),
        (["--nodes", "1", "--cpus-per-node", "1", "--set", "search.resources.cpu=2"], "asks 2 CPUs per trial"),
        (["--nodes", "2"], "is under /tmp, which is private to each node"),
        (["--nodes", "1", "--set", "storage_path=/no such/dir"], "a path with whitespace cannot go into #SBATCH"),
    ],
)
def test_refused_in_one_line(tmp_path, capsys, args, message) -> None:
    assert main(["slurm", str(_config_file(tmp_path)), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sweeper: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.parametrize("time_limit", ["30", "30:00", "04:00:00", "2-00", "2-12:00", "1-00:00:00"])
def test_slurm_time_formats(time_limit) -> None:
    assert SlurmResources(nodes=1, time=time_limit).time == time_limit


def _stub_sbatch(directory: Path, body: str) -> None:
    directory.mkdir(exist_ok=True)
    sbatch = directory / "sbatch"
    sbatch.write_text(f"#!/bin/bash\n{body}\n")
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)


def test_submit_writes_the_script_and_prints_the_job_id(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    stubs = tmp_path / "bin"
    _stub_sbatch(stubs, f'echo "$@" > {tmp_path}/sbatch.args\necho "4242;cluster"')
    monkeypatch.setenv("PATH", f"{stubs}:{os.environ['PATH']}")
    config = _config_file(tmp_path)
    assert main(["slurm", str(config), "--nodes", "1", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert main(["slurm", str(config), "--nodes", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "submitted batch job 4242"
    script = tmp_path / "sweeps" / "slurm-digits.slurm" / "job.sbatch"
    assert (tmp_path / "sbatch.args").read_text().split() == ["--parsable", str(script)]
    assert script.read_text() == dry
    assert not (tmp_path / "sweeps" / "slurm-digits").exists()  # the sweep itself starts in the job


def test_sbatch_missing_or_refusing(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["slurm", str(_config_file(tmp_path)), "--nodes", "1"]) == 2
    assert (
        capsys.readouterr().err
        == "sweeper: error: sbatch not found: run sweeper slurm on a Slurm login node (or put sbatch on PATH)\n"
    )
    assert not (tmp_path / "sweeps").exists()
    _stub_sbatch(tmp_path / "bin", "echo 'sbatch: error: Batch job submission failed: Invalid account' >&2; exit 1")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ.get('PATH', '')}:/usr/bin:/bin")
    assert main(["slurm", str(_config_file(tmp_path)), "--nodes", "1", "--account", "nope"]) == 2
    assert capsys.readouterr().err == (
        "sweeper: error: sbatch refused the job: sbatch: error: Batch job submission failed: Invalid account\n"
    )


def test_resume_if_exists_resumes_only_an_existing_sweep(tmp_path, monkeypatch) -> None:
    import sweeper.cli

    seen: list[bool] = []
    monkeypatch.setattr(sweeper.cli, "_sweep_and_print", lambda config, *, resume, **_: seen.append(resume) or 0)
    config = _config_file(tmp_path)
    assert main(["run", str(config), "--resume-if-exists"]) == 0
    (tmp_path / "sweeps" / "slurm-digits").mkdir(parents=True)
    assert main(["run", str(config), "--resume-if-exists"]) == 0
    assert main(["run", str(config)]) == 0
    assert seen == [False, True, False]


def test_slurm_directory_is_beside_the_sweep(tmp_path) -> None:
    config = load_config(_config_file(tmp_path))
    assert slurm_directory(config) == tmp_path / "sweeps" / "slurm-digits.slurm"


# ------------------------------------------------------------------ a real Slurm


CPUS = min(2, os.cpu_count() or 1)  # the test cluster's node: no more CPUs than this machine has


def _submit(workdir: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [
            str(BIN / "sweeper"),
            "slurm",
            "config.yaml",
            "--nodes",
            "1",
            "--cpus-per-node",
            str(CPUS),
            "--time",
            "00:15:00",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    match = re.match(r"submitted batch job (\d+)\n", done.stdout)
    assert match, done.stdout
    return match.group(1)


def _ray_processes(address: str) -> list[str]:
    """Command lines of live Ray processes of the cluster whose GCS listens on ``address``."""
    port = address.rsplit(":", 1)[1]
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ray" in cmdline and re.search(rf"[=:]{port}\b", cmdline):
            found.append(cmdline)
    return found


@contextlib.contextmanager
def _removed_afterwards(jobs: list[str]) -> Iterator[None]:
    """The jobs' Ray directories (their logs) are removed when the test ends."""
    try:
        yield
    finally:
        for job in jobs:
            shutil.rmtree(f"/tmp/ray-{job}", ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_real_slurm_job_runs_the_sweep_and_a_resubmission_resumes_it(tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    reason = slurm_missing()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path
    _config_file(workdir)
    sweep = workdir / "sweeps" / "slurm-digits"
    logs = workdir / "sweeps" / "slurm-digits.slurm"
    jobs: list[str] = []
    with slurm_cluster(cpus=CPUS) as cluster, _removed_afterwards(jobs):
        env = {**cluster.env, "RAY_DEDUP_LOGS": "0"}
        env.pop("RAY_ADDRESS", None)
        first = _submit(workdir, env)
        jobs.append(first)
        state = cluster.wait_job(first, timeout=400)
        log = (logs / f"slurm-{first}.out").read_text(errors="replace")
        assert (state["JobState"], state["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
        address = re.search(r"sweeper: Ray head on \S+ at (\S+), 1 node\(s\)", log).group(1)
        assert "Ray stopped; the sweep's exit status is 0" in log
        assert _ray_processes(address) == []  # the job stopped its Ray
        port = address.rsplit(":", 1)[1]
        assert Path(f"/tmp/ray-{first}/ray_current_cluster").read_text().endswith(f":{port}")
        shared = Path("/tmp/ray/ray_current_cluster")  # where a later ray.init() would look
        assert not (shared.exists() and shared.read_text().endswith(f":{port}"))

        trials = pd.read_csv(sweep / "trials.csv").set_index("trial_id").sort_index()
        assert len(trials) == 2 and set(trials["status"]) == {"ok"}
        assert sorted(trials[KEY]) == [0.0, 4.0]
        client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("slurm-digits")
        runs = client.search_runs([experiment.experiment_id])
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1 and len(children) == 2
        assert sorted(r.data.tags["sweeper.trial_id"] for r in children) == sorted(trials.index)
        assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}

        # Submitted again: the finished sweep is resumed, not retrained.
        second = _submit(workdir, env)
        jobs.append(second)
        state = cluster.wait_job(second, timeout=400)
        log = (logs / f"slurm-{second}.out").read_text(errors="replace")
        assert (state["JobState"], state["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
        again = pd.read_csv(sweep / "trials.csv").set_index("trial_id").sort_index()
        pd.testing.assert_frame_equal(again, trials)
        assert "started with configuration" not in log  # no trial ran again
        runs = client.search_runs([experiment.experiment_id])
        assert len(runs) == 3 and sum("mlflow.parentRunId" in r.data.tags for r in runs) == 2
        for child in children:
            history = client.get_metric_history(child.info.run_id, "train/loss")
            assert [m.step for m in history] == [1]  # no epoch trained or logged twice
