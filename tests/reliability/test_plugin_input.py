"""A plugin that cannot work stops `sweeper run` and `sweeper check` with exit code 2 and one line
naming the key and the problem, before anything is written: a module that does not import, an
import path to nothing, a method that is not one or whose ``__init__`` does not match its
hyperparameters, a backbone that does not give (B, D), one entry point name in two
distributions, an unknown timm model, timm missing. `sweeper check` prints what a good plugin
config resolves to; `sweeper plugins` lists the built-ins and the installed entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.helpers import tiny_config_data
from tests.reliability.test_bad_input import _assert_refused, _set

REPO = Path(__file__).resolve().parents[2]

GOOD_PLUGIN = '''
"""A method, a backbone and a data set, registered under names of their own."""

import torch
from torch import nn

import sweeper
from sweeper.methods.simclr import SimCLR


@sweeper.register_method("simclr_plus")
class SimCLRPlus(SimCLR):
    """SimCLR under another name: the plugin method contract at its smallest."""


class Pooled(nn.Module):
    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


@sweeper.register_backbone("pooled_conv")
def pooled_conv(*, in_channels: int, image_size: int, width: int = 12) -> nn.Module:
    return Pooled(in_channels, width)


@sweeper.register_dataset("noise")
def noise(*, image_size: int, count: int = 64):
    return torch.rand(count, 3, image_size, image_size), None
'''

NOT_A_METHOD = '''
class Thing:
    """Not an SSLMethod."""
'''

BAD_SIGNATURE = '''
from sweeper.methods.simclr import SimCLR


class WrongInit(SimCLR):
    """Declares SimCLR's hyperparameters (temperature) but takes another keyword."""

    def __init__(self, backbone, *, projector, temp=0.5):
        super().__init__(backbone, projector=projector, temperature=temp)
'''

FEATURE_MAP = """
from torch import nn

import sweeper


@sweeper.register_backbone("feature_map")
def feature_map(*, in_channels: int, image_size: int) -> nn.Module:
    return nn.Conv2d(in_channels, 8, 3, padding=1)  # (B, 8, H, W): never pooled
"""

NO_TIMM = "raise ImportError(\"No module named 'timm' (this test hides it)\")\n"


def _config(tmp_path: Path) -> dict:
    """The tiny digits sweep, searching the learning rate (any method has one)."""
    data = tiny_config_data(tmp_path, name="plugin-input")
    data["search"]["space"] = {"train.lr": {"values": [0.001, 0.002]}}
    data["selection"]["param"] = "train.lr"
    return data


def _dist_info(root: Path, name: str, version: str, entry_points: str) -> None:
    """An installed distribution as importlib.metadata finds it on sys.path: its dist-info."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(entry_points)


def _twin_entry_points(tmp_path: Path) -> list[Path]:
    root = tmp_path / "site"
    _dist_info(root, "fake-alpha", "1.0", "[sweeper.methods]\ntwin = fake_alpha.methods:Twin\n")
    _dist_info(root, "fake-beta", "2.3", "[sweeper.methods]\ntwin = fake_beta.methods:Twin\n")
    return [root]


def _hidden_timm(tmp_path: Path) -> list[Path]:
    root = tmp_path / "no-timm"
    root.mkdir()
    (root / "timm.py").write_text(NO_TIMM)
    return [root]


def _sweeper(tmp_path: Path, *args: str, pythonpath: list[Path] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), str(REPO)])}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "sweeper.cli", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


# (case id, files beside the config, how to set the config, PYTHONPATH entries first, the line's text).
# The config lies in <tmp>/conf/, the command runs in <tmp>: "{conf}" and "{cwd}" stand for them.
Setup = Callable[[Path], list[Path]]
CASES: list[tuple[str, dict[str, str], Callable[[dict], dict], Setup | None, str]] = [
    (
        "plugin module not found",
        {},
        lambda d: _set(d, "plugins", ["no_such_plugin"]),
        None,
        "plugins[0]: module 'no_such_plugin' not found: install its package (pip install -e DIR), put it on "
        "PYTHONPATH, or place it in {conf}, {cwd}",
    ),
    (
        "plugin module raises",
        {"boom.py": "raise RuntimeError('boom at import')\n"},
        lambda d: _set(d, "plugins", ["boom"]),
        None,
        "plugins[0]: module 'boom' raised while importing: RuntimeError: boom at import",
    ),
    (
        "import path to a missing attribute",
        {"nets.py": FEATURE_MAP.replace("feature_map", "tiny_net")},
        lambda d: _set(d, "model.backbone", "nets:tiny_nte"),
        None,
        "model.backbone: 'nets' has no attribute 'tiny_nte' (did you mean 'tiny_net'?)",
    ),
    (
        "method that is not an SSLMethod",
        {"things.py": NOT_A_METHOD},
        lambda d: _set(d, "method.name", "things:Thing"),
        None,
        "method.name: 'things:Thing' is the class things.Thing, not a subclass of sweeper.SSLMethod",
    ),
    (
        "method __init__ does not match its hyperparameters",
        {"wrong.py": BAD_SIGNATURE},
        lambda d: _set(d, "method.name", "wrong:WrongInit"),
        None,
        # (the config locates this under method.params: the params cannot be typed by this class)
        "wrong:WrongInit: its hyperparameters ['temperature'] are not arguments of __init__; "
        "__init__ takes ['temp'], which are not hyperparameters",
    ),
    (
        "backbone gives (B, C, H, W)",
        {"maps.py": FEATURE_MAP},
        lambda d: _set(_set(d, "plugins", ["maps"]), "model.backbone", "feature_map"),
        None,
        "model.backbone maps:feature_map returns (2, 8, 8, 8) for a dummy batch (2, 1, 8, 8): a backbone must map "
        "images to (B, D) representations",
    ),
    (
        "one entry point name in two distributions",
        {},
        lambda d: _set(d, "method.name", "twin"),
        _twin_entry_points,
        "method.name: two installed packages declare the sweeper.methods entry point 'twin' (fake-alpha 1.0 and "
        "fake-beta 2.3)",
    ),
    (
        "unknown timm model",
        {},
        lambda d: _set(d, "model.backbone", "timm/resnet18x"),
        None,
        "model.backbone: timm has no model 'resnet18x' (did you mean 'timm/resnet18'",
    ),
    (
        "timm not installed",
        {},
        lambda d: _set(d, "model.backbone", "timm/resnet18"),
        _hidden_timm,
        'model.backbone: timm/resnet18 needs timm, which is not installed: pip install "sweeper[timm]"',
    ),
]


def _write_case(tmp_path: Path, files: dict[str, str], change: Callable[[dict], dict]) -> Path:
    conf = tmp_path / "conf"
    conf.mkdir()
    for name, source in files.items():
        (conf / name).write_text(source)
    path = conf / "config.yaml"
    path.write_text(yaml.safe_dump(change(_config(tmp_path))))
    return path


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize(("case", "files", "change", "setup", "expected"), CASES, ids=[c[0] for c in CASES])
def test_a_plugin_that_cannot_work_is_refused_in_one_line(
    tmp_path, command, case, files, change, setup, expected
) -> None:
    config = _write_case(tmp_path, files, change)
    pythonpath = setup(tmp_path) if setup is not None else []
    done = _sweeper(tmp_path, command, str(config), pythonpath=pythonpath)
    _assert_refused(done, expected.format(conf=tmp_path / "conf", cwd=tmp_path), tmp_path)


def test_the_feature_map_backbone_passes_the_config_and_is_refused_by_the_preflight(tmp_path) -> None:
    """What loading the config cannot see (the backbone's output shape) the run's preflight does:
    the config loads (its names resolve), the run is refused before the sweep writes anything."""
    config = _write_case(tmp_path, {"maps.py": FEATURE_MAP}, CASES[5][2])
    code = f"from sweeper.config import load_config; print(load_config({str(config)!r}).model.backbone)"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert loaded.returncode == 0 and loaded.stdout.strip() == "maps:feature_map", loaded.stderr
    _assert_refused(_sweeper(tmp_path, "run", str(config)), "returns (2, 8, 8, 8) for a dummy batch", tmp_path)


def test_check_prints_each_component_of_a_good_plugin_config(tmp_path) -> None:
    conf = tmp_path / "conf"
    (conf / "goodplug").mkdir(parents=True)
    (conf / "goodplug" / "__init__.py").write_text(GOOD_PLUGIN)
    data = _config(tmp_path)
    data |= {"plugins": ["goodplug"], "method": {"name": "simclr_plus", "params": {"temperature": 0.2}}}
    data["model"] |= {"backbone": "pooled_conv", "backbone_args": {"width": 12}}
    data["evaluation"]["oracle_datasets"] = [{"dataset": "noise", "dataset_args": {"count": 32}}]
    (conf / "config.yaml").write_text(yaml.safe_dump(data))

    done = _sweeper(tmp_path, "check", str(conf / "config.yaml"))

    assert done.returncode == 0, done.stderr
    source = conf / "goodplug" / "__init__.py"
    lines = done.stdout.splitlines()
    assert lines[0] == (
        f"plugin   goodplug (local module, shipped to the Ray workers), imported from {source}: "
        "registers method simclr_plus, backbone pooled_conv, dataset noise"
    )
    assert lines[1] == (
        f"method   simclr_plus -> goodplug:SimCLRPlus (registered by goodplug), imported from {source}: "
        "hyperparameters temperature"
    )
    assert lines[2] == (
        f"backbone pooled_conv -> goodplug:pooled_conv (registered by goodplug), imported from {source}: "
        "width 12 (measured on 2 dummy 1-channel 8 px images)"
    )
    assert lines[3].startswith("dataset  digits (built-in), imported from ")
    assert lines[3].endswith("sweeper/data/datasets.py: 1-channel images, no root needed")
    assert lines[4] == (
        f"dataset  noise -> goodplug:noise (registered by goodplug), imported from {source}: "
        "factory(image_size, count), not called (no data loaded here)"
    )
    assert lines[5] == f"{conf / 'config.yaml'}: 5 component(s) import and fit here"
    assert len(lines) == 6 and not done.stderr.strip()
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "mlflow.db").exists()


def test_plugins_lists_built_ins_entry_points_and_registered_names(tmp_path) -> None:
    site = tmp_path / "site"
    _dist_info(
        site,
        "fake-nets",
        "0.3",
        "[sweeper.backbones]\nwidenet = fake_nets.zoo:wide\n\n[sweeper.methods]\nvicreg = fake_nets.zoo:Impostor\n",
    )
    (tmp_path / "goodplug").mkdir()
    (tmp_path / "goodplug" / "__init__.py").write_text(GOOD_PLUGIN)
    config = _config(tmp_path) | {"plugins": ["goodplug"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))

    listed = _sweeper(tmp_path, "plugins", pythonpath=[site])
    with_config = _sweeper(tmp_path, "plugins", "config.yaml", pythonpath=[site])

    assert listed.returncode == 0 and with_config.returncode == 0, listed.stderr + with_config.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert ["method", "vicreg", "sweeper.methods.vicreg:VICReg", "built-in"] in rows
    assert ["backbone", "small_cnn", "sweeper.models.backbones:small_cnn", "built-in"] in rows
    assert ["dataset", "digits", "sweeper.data.datasets:load_digits", "built-in"] in rows
    assert ["backbone", "widenet", "fake_nets.zoo:wide", "entry", "point", "of", "fake-nets", "0.3"] in rows
    shadow = [row for row in rows if row[:3] == ["method", "vicreg", "fake_nets.zoo:Impostor"]]
    assert shadow and " ".join(shadow[0][3:]) == (
        "entry point of fake-nets 0.3 (ignored: a built-in name cannot be shadowed)"
    )
    assert not any("goodplug" in line for line in listed.stdout.splitlines())
    registered = [line.split() for line in with_config.stdout.splitlines() if "goodplug" in line]
    assert registered == [
        ["method", "simclr_plus", "goodplug:SimCLRPlus", "registered", "by", "goodplug"],
        ["backbone", "pooled_conv", "goodplug:pooled_conv", "registered", "by", "goodplug"],
        ["dataset", "noise", "goodplug:noise", "registered", "by", "goodplug"],
    ]
