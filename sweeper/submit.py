"""``sweeper submit``: send a sweep to a Ray cluster as a Ray Job.

The driver (``python -m sweeper.cli run CONFIG --address auto``) then runs on the cluster, with
the current directory as the job's working directory (the project's code and the config travel
with it; dependencies come from the cluster's image). Heads that demand token authentication
(Ray 2.6x, ``RAY_AUTH_MODE=token``) are handled by Ray's SDK, which reads the token from
``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``; the token is never
printed, put in the job's entrypoint or runtime environment, or logged.
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

from sweeper.errors import SubmitError

__all__ = ["DEFAULT_EXCLUDES", "submit_sweep"]

DEFAULT_EXCLUDES = [".git", ".venv", "sweeps", "mlflow.db", "*.egg-info", "__pycache__", ".pytest_cache"]


def submit_sweep(
    config_path: Path,
    *,
    address: str,
    overrides: Sequence[str] = (),
    runtime_env: Mapping[str, Any] | None = None,
    wait: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """Submit ``config_path`` (a file under the current directory) as a Ray Job.

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
    env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": list(DEFAULT_EXCLUDES)}
    env |= dict(runtime_env or {})
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
