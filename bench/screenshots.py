"""The README's MLflow screenshots: what a sweep looks like in the MLflow UI.

Runs the quickstart sweep (VICReg's covariance weight on digits, shortened to ``--epochs``) in a
scratch directory, starts ``mlflow server`` on its sqlite store (loopback, a free port), and
drives headless Debian Chromium over the DevTools protocol to take two PNG screenshots:

* ``docs/mlflow-parent-run.png``: the sweep's parent run (the tags naming each rule's pick,
  the child runs, the config as params);
* ``docs/mlflow-report-plot.png``: the report's ``rankme_vs_param.png`` in the run's artifacts.

The UI opens in its "Model training" view (``?workflowType=machine_learning``) with its
assistant panel closed (remembered in the page's localStorage, which the script sets first).

Usage::

    python bench/screenshots.py                      # ~1 min on 2 CPU cores
    python bench/screenshots.py --epochs 20 --out docs
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
BIN = Path(sys.executable).parent
# The MLflow UI's own localStorage keys: its assistant side panel stays closed.
LOCAL_STORAGE = {
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

try:  # running from a checkout without `pip install -e .`
    import sweeper  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer in {timeout} s") from None
            time.sleep(0.5)


@contextlib.contextmanager
def started(command: list[str], log: Path, ready_url: str, *, timeout: float = 120) -> Iterator[None]:
    """Run ``command`` in its own session until the block ends; wait for ``ready_url`` first."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    with log.open("ab") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_http(ready_url, timeout)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def run_quickstart(directory: Path, *, epochs: int) -> tuple[str, str]:
    """The quickstart sweep in ``directory``; returns (experiment id, parent run id)."""
    from mlflow.tracking import MlflowClient

    from sweeper.config import load_config
    from sweeper.sweep import run_sweep

    config = load_config(
        QUICKSTART,
        overrides={
            "storage_path": str(directory / "sweeps"),
            "tracking.uri": f"sqlite:///{directory / 'mlflow.db'}",
            "train.epochs": epochs,
            "evaluation.every_n_epochs": max(1, epochs // 5),
        },
    )
    os.chdir(directory)  # MLflow keeps a sqlite store's artifacts in ./mlruns
    result = run_sweep(config, verbose=0)
    experiment = MlflowClient(config.tracking.uri).get_experiment_by_name(config.experiment_name)
    return experiment.experiment_id, str(result.parent_run_id)


class DevTools:
    """The few DevTools-protocol calls the screenshots need, over one page's websocket."""

    def __init__(self, websocket: object) -> None:
        self.websocket = websocket
        self.calls = 0

    async def call(self, method: str, **params: object) -> dict:
        self.calls += 1
        await self.websocket.send_json({"id": self.calls, "method": method, "params": params})
        async for message in self.websocket:
            data = json.loads(message.data)
            if data.get("id") == self.calls:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data["result"]
        raise RuntimeError("Chromium closed the DevTools connection")

    async def evaluate(self, expression: str) -> object:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def show(self, url: str, *, text: str, timeout: float = 60) -> None:
        """Load ``url`` and wait until the page shows ``text`` (the UI renders after its fetches)."""
        await self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not await self.evaluate(f"document.body !== null && document.body.innerText.includes({text!r})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not show {text!r} in {timeout} s")
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # images, fonts and layout settle

    async def screenshot(self, path: Path) -> None:
        result = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(result["data"]))


async def take(pages: list[tuple[str, str, Path]], *, devtools_port: int, size: tuple[int, int]) -> None:
    import aiohttp  # ray[default]'s: a websocket client

    with urllib.request.urlopen(f"http://127.0.0.1:{devtools_port}/json/list", timeout=10) as response:
        (page,) = [target for target in json.load(response) if target["type"] == "page"]
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as websocket:
            tools = DevTools(websocket)
            width, height = size
            metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
            await tools.call("Emulation.setDeviceMetricsOverride", **metrics)
            await tools.show(pages[0][0], text="mlflow")
            for key, value in LOCAL_STORAGE.items():
                await tools.evaluate(f"localStorage.setItem({key!r}, {value!r})")
            await tools.call("Page.navigate", url="about:blank")  # the UI reads them when it starts
            for url, text, path in pages:
                await tools.show(url, text=text)
                await tools.screenshot(path)
                print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNGs go [docs/]")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per quickstart trial [10]")
    parser.add_argument("--size", type=int, nargs=2, default=(1400, 1000), metavar=("W", "H"))
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not found: apt-get install chromium")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sweeper-screenshots-") as scratch:
        directory = Path(scratch)
        experiment, parent = run_quickstart(directory, epochs=args.epochs)
        mlflow_port, devtools_port = free_port(), free_port()
        server = [
            str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
            "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
        ]  # fmt: skip
        browser = [
            chromium, *CHROMIUM_FLAGS, f"--user-data-dir={directory / 'chromium'}",
            f"--remote-debugging-port={devtools_port}", "about:blank",
        ]  # fmt: skip
        run = f"http://127.0.0.1:{mlflow_port}/#/experiments/{experiment}/runs/{parent}"
        view = "?workflowType=machine_learning"
        pages = [
            (run + view, "Parameters", out / "mlflow-parent-run.png"),
            (
                f"{run}/artifacts/report/rankme_vs_param.png{view}",
                "rankme_vs_param.png",
                out / "mlflow-report-plot.png",
            ),
        ]
        with started(server, directory / "mlflow.log", f"http://127.0.0.1:{mlflow_port}/health"):
            with started(browser, directory / "chromium.log", f"http://127.0.0.1:{devtools_port}/json/version"):
                asyncio.run(take(pages, devtools_port=devtools_port, size=tuple(args.size)))
        os.chdir(ROOT)


if __name__ == "__main__":
    main()
