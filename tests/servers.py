"""Loopback servers the tests start and stop: MLflow tracking servers (and ports for Ray)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    """Wait until ``url`` answers (a 401 counts: the server is up and wants credentials)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up in {timeout} s")


def start_mlflow(
    root: Path, port: int, *, backend_uri: str | None = None, timeout: float = 120, wait: bool = True
) -> subprocess.Popen:
    """An `mlflow server` on 127.0.0.1:``port`` with artifacts under ``root`` and its store at
    ``backend_uri`` (default: a sqlite file under ``root``); its output goes to
    ``root/mlflow-server.log``, whose tail a start-up timeout reports. ``wait=False`` returns
    at once (call :func:`wait_mlflow` before using it)."""
    log = root / "mlflow-server.log"
    with log.open("ab") as output:
        server = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                backend_uri or f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if wait:
        wait_mlflow(server, root, port, timeout=timeout)
    return server


def wait_mlflow(server: subprocess.Popen, root: Path, port: int, *, timeout: float = 120) -> None:
    """Wait for a server of :func:`start_mlflow` to answer; stop it and show its log if it does not."""
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=timeout)
    except TimeoutError as exc:
        stop(server)
        log = (root / "mlflow-server.log").read_text(errors="replace")[-3000:]
        raise TimeoutError(f"{exc}; its log ends:\n{log}") from None


def stop(process: subprocess.Popen) -> None:
    """Stop a server started with its own session, children included."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def start_s3(root: Path, port: int, *, timeout: float = 60) -> subprocess.Popen:
    """An S3-compatible server (moto) on 127.0.0.1:``port``, in memory; its output goes to
    ``root/s3-server.log``. Any credentials are accepted."""
    log = root / "s3-server.log"
    with log.open("ab") as output:
        server = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", timeout=timeout)
    except TimeoutError as exc:
        stop(server)
        raise TimeoutError(f"{exc}; its log ends:\n{log.read_text(errors='replace')[-3000:]}") from None
    return server
