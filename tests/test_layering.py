"""DESIGN.md's layering rule: a module imports only from its own layer or those below, the
modules of one layer import each other without cycles, and low layers never import the
orchestration stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sweeper"
# DESIGN.md's layout: every top-level module or package of sweeper/ and its layer.
LAYERS = {
    "errors": 0,
    "names": 0,
    "registry": 0,  # component names, entry points, import paths (importlib only)
    "yamlio": 0,
    "config": 0,
    "hyperparams": 0,
    "metrics": 0,
    "selection": 0,
    "storage": 0,
    "data": 1,
    "models": 1,
    "methods": 1,
    "probes": 1,
    "embeddings": 1,
    "distributed": 0,  # torch.distributed helpers; the metrics (L0) all-reduce with them
    "evaluation": 2,
    "engine": 2,
    "tracking": 2,
    "trainable": 3,
    "objective": 3,
    "testing": 3,  # sweeper.testing.check_method: the method contract, through the engine
    "sweep": 3,
    "report": 3,
    "submit": 3,
    "slurm": 3,
    "cli": 4,
}

LOW_LAYERS = [
    "sweeper.config",
    "sweeper.registry",
    "sweeper.storage",
    "sweeper.hyperparams",
    "sweeper.selection",
    "sweeper.metrics",
    "sweeper.distributed",
    "sweeper.data",
    "sweeper.models",
    "sweeper.methods",
    "sweeper.probes",
    "sweeper.engine",
    "sweeper.evaluation",
    "sweeper.embeddings",
]


def _unit(path: Path) -> str:
    """``sweeper/sweep/_run.py`` -> ``sweep``; ``sweeper/config.py`` -> ``config``."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_units(path: Path) -> set[str]:
    """The sweeper units ``path`` imports, at module level or inside functions."""
    units: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "sweeper" and len(parts) > 1 and parts[1] in LAYERS:
                units.add(parts[1])
    return units


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE and path.name in ("__init__.py", "__main__.py"):
            continue
        unit = _unit(path)
        graph.setdefault(unit, set()).update(_imported_units(path) - {unit})
    return graph


def test_every_module_has_a_layer() -> None:
    assert set(_import_graph()) <= set(LAYERS), (
        f"add {sorted(set(_import_graph()) - set(LAYERS))} to LAYERS (and DESIGN.md)"
    )


def test_modules_import_only_from_their_layer_or_below() -> None:
    upward = [
        f"{unit} (L{LAYERS[unit]}) imports {other} (L{LAYERS[other]})"
        for unit, imported in _import_graph().items()
        for other in sorted(imported)
        if LAYERS[other] > LAYERS[unit]
    ]
    assert not upward, upward


def test_the_imports_have_no_cycle() -> None:
    try:
        tuple(TopologicalSorter(_import_graph()).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_layer_check_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself: an upward import is found."""
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from sweeper.sweep import run_sweep\n")
    assert _imported_units(module) == {"sweep"}


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
