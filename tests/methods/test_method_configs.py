"""configs/digits/<method>.yaml and configs/cluster/<method>.yaml load and sweep the paper's knob."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeper.config import load_config
from sweeper.registry import BUILTIN_METHODS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# The hyperparameter each paper sweeps, and its known collapsing value (in the digits grid).
SWEPT = {
    "simclr": ("temperature", 4.0),
    "vicreg": ("cov_weight", 0.0),
    "vicreg_exp": ("cov_weight", 0.0),
    "vicreg_ctr": ("cov_weight", 0.0),
    "barlow_twins": ("lambda_offdiag", 0.0),
    "byol": ("base_momentum", 0.0),
    "dino": ("teacher_temp", 0.08),
    "swav": ("epsilon", 3.0),
    "carp": ("block_size", 1024),
}


def test_every_method_has_both_configs() -> None:
    assert set(SWEPT) == set(BUILTIN_METHODS)
    for kind in ("digits", "cluster"):
        assert {p.stem for p in (CONFIGS / kind).glob("*.yaml")} == set(SWEPT), kind


@pytest.mark.parametrize("method", sorted(SWEPT))
def test_digits_config_is_a_small_ordered_sweep_with_the_collapse_setting(method) -> None:
    config = load_config(CONFIGS / "digits" / f"{method}.yaml")
    param, collapse = SWEPT[method]
    key = f"method.params.{param}"
    assert config.method.name == method
    assert config.data.dataset == "digits" and config.model.backbone == "small_cnn"
    assert config.train.epochs <= 20 and config.search.algorithm == "grid"
    values = config.search.space[key].values
    assert len(values) <= 6 and values == sorted(values)
    assert collapse in values and config.method.params[param] in values
    assert config.selection.param == key


@pytest.mark.parametrize("method", sorted(SWEPT))
def test_cluster_config_is_paper_scale(method, tmp_path) -> None:
    config = load_config(CONFIGS / "cluster" / f"{method}.yaml", overrides={"data.root": str(tmp_path)})
    assert config.method.name == method
    assert config.data.dataset == "imagefolder" and config.data.image_size == 224
    assert config.model.backbone == "resnet50"
    assert config.train.epochs == 100 and 1024 <= config.train.batch_size <= 4096
    assert config.train.optimizer == ("adamw" if method == "dino" else "lars")
    assert config.search.resources.gpu == 1
    assert f"method.params.{SWEPT[method][0]}" in config.search.space


def test_cluster_configs_point_at_the_imagenet_placeholder() -> None:
    for path in (CONFIGS / "cluster").glob("*.yaml"):
        assert "root: /data/imagenet " in path.read_text(), path.name
