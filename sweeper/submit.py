"""``sweeper submit``: send a sweep to a Ray cluster as a Ray Job.

The driver (``python -m sweeper.cli run CONFIG --address auto``) then runs on the cluster, with
the current directory as the job's working directory (the project's code and the config travel
with it; dependencies come from the cluster's image). Plugin modules that are neither installed
nor importable from that directory (a package elsewhere on this machine's ``PYTHONPATH``, a
module beside a config in a subdirectory) join the job's ``runtime_env`` ``py_modules``
(:func:`job_runtime_env`), so the job's driver and every worker import this machine's copy.
Heads that demand token authentication (Ray 2.6x, ``RAY_AUTH_MODE=token``) are handled by
Ray's SDK, which reads the token from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token``; the token is never printed, put in the job's entrypoint or runtime
environment, or logged.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from ray.job_submission import JobStatus, JobSubmissionClient

from sweeper.config import SweeperConfig, load_config
from sweeper.errors import SubmitError

__all__ = ["DEFAULT_EXCLUDES", "job_runtime_env", "submit_sweep"]

DEFAULT_EXCLUDES = [".git", ".venv", "sweeps", "mlflow.db", "*.egg-info", "__pycache__", ".pytest_cache"]


def submit_sweep(
    config_path: Path,
    *,
    address: str,
    overrides: Sequence[str] = (),
    runtime_env: Mapping[str, Any] | None = None,
    wait: bool = False,
    out: TextIO = sys.stdout,
    config: SweeperConfig | None = None,
) -> int:
    """Submit ``config_path`` (a file under the current directory) as a Ray Job; ``config`` is
    that file loaded with ``overrides`` (loaded here when not given), its plugins imported.

    Returns 0 once submitted (``wait=False``), else the job's outcome: 0 if it succeeded,
    1 if it failed or was stopped. Raises :class:`SubmitError` with a clear message when the
    head cannot be reached or refuses the credentials.
    """
    working_dir = Path.cwd()
    config_path = config_path.resolve()
    try:
        relative = config_path.relative_to(working_dir)
    except ValueError:
        raise SubmitError(
            f"{config_path} is outside the current directory, which is what the job ships: "
            "run sweeper submit from a directory that contains the config"
        ) from None
    command = ["python", "-m", "sweeper.cli", "run", relative.as_posix(), "--address", "auto", "--quiet"]
    for override in overrides:
        command += ["--set", override]
    if config is None:
        config = load_config(config_path, overrides=overrides)
    env = job_runtime_env(config, working_dir=working_dir, runtime_env=runtime_env, search_dirs=[config_path.parent])
    client = _client(address)
    job_id = client.submit_job(entrypoint=shlex.join(command), runtime_env=env)
    print(f"submitted job {job_id} to {address}", file=out, flush=True)
    if not wait:
        print(f"follow it with: ray job logs --follow {job_id} --address {address}", file=out)
        return 0
    asyncio.run(_stream_logs(client, job_id, out))
    status = client.get_job_status(job_id)
    print(f"job {job_id}: {status.value}", file=out)
    return 0 if status == JobStatus.SUCCEEDED else 1


def job_runtime_env(
    config: SweeperConfig,
    *,
    working_dir: Path,
    runtime_env: Mapping[str, Any] | None = None,
    search_dirs: Sequence[Path] = (),
) -> dict[str, Any]:
    """The job's runtime_env: ``working_dir`` (with :data:`DEFAULT_EXCLUDES`), the user's
    ``runtime_env`` over it, and in ``py_modules`` (after the user's) the plugin modules to ship
    (:func:`sweeper.sweep.plugin_runtime_env`) that the working directory does not provide: Ray
    puts the working directory itself on the job's ``PYTHONPATH``, so a module directly in it
    imports by name there, while one elsewhere, or in a subdirectory, would not."""
    from sweeper.sweep import plugin_runtime_env

    env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": list(DEFAULT_EXCLUDES)}
    env |= dict(runtime_env or {})
    shipped = (plugin_runtime_env(config, search_dirs=search_dirs) or {}).get("py_modules", [])
    job_dir = Path(env["working_dir"]).resolve() if Path(str(env["working_dir"])).is_dir() else None
    missing = [module for module in shipped if job_dir is None or Path(module).parent != job_dir]
    if missing:
        given = env.get("py_modules", [])
        if not isinstance(given, list):
            raise SubmitError(f"--runtime-env: py_modules must be a list of paths or URIs, got {type(given).__name__}")
        env["py_modules"] = [*given, *(module for module in missing if module not in given)]
    return env


def _client(address: str) -> JobSubmissionClient:
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # the SDK raises ConnectionError/RuntimeError/… with long texts
        text = str(exc)
        if "401" in text or "Unauthorized" in text or "authentication" in text.lower():
            hint = (
                "the head requires token authentication: set RAY_AUTH_MODE=token and the token "
                "in RAY_AUTH_TOKEN (or ~/.ray/auth_token)"
            )
        else:
            hint = "check --address (the dashboard's http://HOST:8265) and that the head is running"
        token = os.environ.get("RAY_AUTH_TOKEN")
        if token:
            text = text.replace(token, "***")
        first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise SubmitError(f"cannot reach the Ray head at {address} ({first_line[:200]}): {hint}") from None


async def _stream_logs(client: JobSubmissionClient, job_id: str, out: TextIO) -> None:
    async for lines in client.tail_job_logs(job_id):
        out.write(lines)
        out.flush()
