"""DESIGN.md's layering rule: low layers never import the orchestration stack."""

from __future__ import annotations

import subprocess
import sys

import pytest

LOW_LAYERS = [
    "sweeper.config",
    "sweeper.storage",
    "sweeper.hyperparams",
    "sweeper.selection",
    "sweeper.metrics",
    "sweeper.data",
    "sweeper.models",
    "sweeper.methods",
    "sweeper.probes",
    "sweeper.engine",
]


@pytest.mark.parametrize("module", LOW_LAYERS)
def test_low_layer_does_not_import_ray_mlflow_optuna(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"


def test_config_and_selection_import_without_torch() -> None:
    code = "import sys, sweeper.config, sweeper.selection, sweeper.storage; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
