"""Reading a sweep never needs its data nor its plugins: ``sweeper status`` and ``compare`` of a
finished ImageFolder sweep with a plugin backbone, copied to a machine without the images and
without the plugin module; a resume there is refused in its preflight, naming the data root."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.test_cli import sweeper

PLUGIN = """
import torch
from torch import nn

import sweeper.registry


class TinyConv(nn.Module):
    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


@sweeper.registry.register_backbone("tiny_conv")
def tiny_conv(*, in_channels: int, image_size: int, width: int = 16) -> nn.Module:
    return TinyConv(in_channels, width)
"""


def _image_folder(root: Path) -> None:
    """train/ and val/ with two classes of 8×8 RGB images (bright vs dark)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 40), ("val", 12)):
        for label, base in (("bright", 170), ("dark", 30)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = np.clip(base + rng.integers(-30, 30, size=(8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")


@pytest.mark.slow
def test_status_and_compare_read_a_sweep_without_its_data_and_plugins(tmp_path: Path) -> None:
    work, elsewhere, root = tmp_path / "work", tmp_path / "elsewhere", tmp_path / "images"
    work.mkdir()
    elsewhere.mkdir()
    _image_folder(root)
    (work / "tiny_backbone.py").write_text(PLUGIN)
    config = {
        "name": "folder-sweep",
        "plugins": ["tiny_backbone"],
        "storage_path": str(tmp_path / "sweeps"),
        "data": {"dataset": "imagefolder", "root": str(root), "image_size": 8, "in_memory": True},
        "model": {"backbone": "tiny_conv", "backbone_args": {"width": 16}, "projector": [32, 16]},
        "train": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0},
        "evaluation": {"every_n_epochs": 1, "rankme_samples": 80, "linear_epochs": 5},
        "search": {"space": {"method.params.cov_weight": {"values": [0.5, 2.0]}}},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    (work / "sweep.yaml").write_text(yaml.safe_dump(config))
    ran = sweeper("run", "sweep.yaml", "--quiet", cwd=work)
    assert ran.returncode == 0, ran.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "sweeps" / "folder-sweep" / "sweeper.yaml").read_text())
    assert saved["model"]["backbone"] == "tiny_backbone:tiny_conv"  # the canonical target, not the name

    shutil.rmtree(root)
    (work / "tiny_backbone.py").unlink()
    sweep = str(tmp_path / "sweeps" / "folder-sweep")
    status = sweeper("status", sweep, cwd=elsewhere)
    assert status.returncode == 0, status.stderr
    assert "2 ok" in status.stdout and "oracle/linear/images" in status.stdout
    compare = sweeper("compare", sweep, "--no-tracking", cwd=elsewhere)
    assert compare.returncode == 0, compare.stderr
    assert "Headline pick" in compare.stdout and (Path(sweep) / "report.md").is_file()

    resumed = sweeper("resume", sweep, "--quiet", cwd=elsewhere)
    assert resumed.returncode == 2
    assert resumed.stderr.strip().splitlines() == [
        f"sweeper: error: data root {str(root)!r} does not exist: point data.root at the imagefolder directory "
        "(nothing is downloaded)"
    ]
