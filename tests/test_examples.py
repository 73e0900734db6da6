"""Every example under examples/ runs as its README says: `sweeper run examples/<name>/sweep.yaml`
from the repository root, in a fresh process, shortened by --set overrides only.

The examples are found on disk, so a new one is tested without editing this file (one without a
sweep.yaml fails). An example that is a package (a pyproject.toml) is installed into a temporary
directory first — never into the virtual environment — and put on PYTHONPATH, so its entry points
resolve as after `pip install`; its own tests/ run with that installation too.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NAMES = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
PACKAGES = [name for name in NAMES if (EXAMPLES / name / "pyproject.toml").is_file()]
PACKAGE_TESTS = [name for name in PACKAGES if (EXAMPLES / name / "tests").is_dir()]

# Every example: 2 epochs, the label-free metrics at each, a short linear probe.
SHORT = ["train.epochs=2", "train.warmup_epochs=0", "evaluation.every_n_epochs=1", "evaluation.linear_epochs=10"]
# Fewer images where the data allow it (a digits subset needs labels; the plugin takes a count).
SMALLER = {
    "simsiam": ["data.train_per_class=50"],
    "timm_backbone": ["data.train_per_class=50"],
    "unlabelled_data": ["data.dataset_args.num_images=500"],
}
NO_LABELS = {"unlabelled_data"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each example package installed (no dependencies: sweeper is the checkout) into its own
    --target directory, from a copy so that the build leaves nothing in the source tree."""
    sites = {}
    for name in PACKAGES:
        work = tmp_path_factory.mktemp(f"install-{name}")
        source = work / "source"
        shutil.copytree(EXAMPLES / name, source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
        site = work / "site"
        command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet"]
        done = subprocess.run(
            [*command, "--target", str(site), str(source)], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"pip install examples/{name} failed:\n{done.stdout}\n{done.stderr}"
        sites[name] = site
    return sites


def _env(site: Path | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return env


def _grid_size(config: dict) -> int:
    search = config.get("search", {})
    if search.get("algorithm", "grid") != "grid":
        return int(search.get("num_samples", 1))
    values = [len(spec["values"]) for spec in search.get("space", {}).values()]
    return math.prod(values) * int(search.get("num_samples", 1))


@pytest.mark.parametrize("name", PACKAGE_TESTS)
def test_example_package_tests_pass_against_the_installed_package(name: str, installed: dict[str, Path]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"examples/{name}/tests"],
        cwd=ROOT,
        env=_env(installed[name]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"examples/{name}/tests failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_example_sweep_runs_from_the_repository_root(name: str, installed: dict[str, Path], tmp_path: Path) -> None:
    path = EXAMPLES / name / "sweep.yaml"
    assert path.is_file(), f"examples/{name} has no sweep.yaml: every example is a sweep `sweeper run` can run"
    config = yaml.safe_load(path.read_text())
    overrides = [f"storage_path={tmp_path}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", *SHORT]
    overrides += SMALLER.get(name, [])
    command = [sys.executable, "-m", "sweeper.cli", "run", f"examples/{name}/sweep.yaml"]
    for override in overrides:
        command += ["--set", override]
    done = subprocess.run(command, cwd=ROOT, env=_env(installed.get(name)), capture_output=True, text=True, timeout=300)
    output = f"{done.stdout[-6000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, f"sweeper run examples/{name}/sweep.yaml exited {done.returncode}:\n{output}"

    sweep = tmp_path / config["name"]
    with (sweep / "trials.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == _grid_size(config), output
    assert [row["status"] for row in rows] == ["ok"] * len(rows), output
    for report in ("report.md", "report.json", "report.csv"):
        assert (sweep / report).is_file(), f"no {report} in {sweep}"
    report = json.loads((sweep / "report.json").read_text())
    trial_ids = {row["trial_id"] for row in rows}
    label_free = [s for s in report["selections"] if s["rule"].startswith(("rankme/", "rank_gate/", "consensus/"))]
    headline = {"max": "rankme/max", "plateau": "rankme/plateau", "noise_plateau": "rankme/noise_plateau"}
    rule = headline.get(config.get("selection", {}).get("rule", "plateau"))
    assert label_free and all(s["trials"] in trial_ids for s in label_free), report["selections"]
    assert rule is None or any(s["rule"] == rule for s in label_free), report["selections"]

    columns = list(rows[0])
    oracle_columns = [c for c in columns if c.startswith("oracle/")]
    if name in NO_LABELS:
        assert "oracle_skipped" in columns and not oracle_columns, columns
        reasons = {row["oracle_skipped"] for row in rows}
        assert len(reasons) == 1 and "has no labels" in reasons.pop(), reasons
        assert "has no labels" in report["oracle_skipped"]
        assert not any(s["rule"].startswith("oracle/") for s in report["selections"])
        assert "No oracle" in (sweep / "report.md").read_text()
    else:
        assert oracle_columns and "oracle_skipped" not in columns, columns

    if name in installed:  # its components came from the installed package (an entry point), not the tree
        saved = yaml.safe_load((sweep / "sweeper.yaml").read_text())
        targets = [saved["method"]["name"], saved["model"]["backbone"], saved["data"]["dataset"]]
        assert any((installed[name] / t.partition(":")[0].split(".")[0]).is_dir() for t in targets if ":" in t), targets


def test_the_readme_shows_the_dcl_plugin_as_it_is() -> None:
    """README's "Bring your own" prints examples/dcl/dcl.py less its docstring: the shortest
    complete plugin, which the sweep above runs, must be what readers copy."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(
        "```python\nfrom collections.abc import Sequence\n\nimport torch\nfrom lightly.loss import DCLLoss"
    )
    shown = readme[start + len("```python\n") : readme.index("```", start + 3)]
    source = (EXAMPLES / "dcl" / "dcl.py").read_text()
    assert source.endswith(shown) and source[: -len(shown)].strip().startswith('"""'), "README and dcl.py differ"
