"""A method sweeper does not ship joins by the same door as the built-ins: by import path, by a
name a ``plugins:`` module registers, or by an entry point; its hyperparameters are validated
exactly like a built-in's; the contract check, two processes included, passes a correct plugin
and names what breaks in a wrong one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from lightly.loss import NTXentLoss
from pydantic import Field

import sweeper
from sweeper import registry
from sweeper.config import ConfigError, load_config
from sweeper.models import Backbone, build_projector
from sweeper.testing import check_method, ddp_equivalence, method_config

MODULE = __name__  # as pytest imported this file: the import path of the classes below


class ContrastParams(sweeper.MethodParams):
    """A SimCLR-like test method: the temperature and whether the negatives span all ranks."""

    temperature: float = Field(0.5, gt=0)
    global_negatives: bool = True


class Contrast(sweeper.SSLMethod):
    """InfoNCE over the two views (a plugin as a user writes one)."""

    hyperparameters = ContrastParams

    def __init__(
        self, backbone: Backbone, *, projector: Sequence[int], temperature: float, global_negatives: bool
    ) -> None:
        super().__init__(backbone, build_projector(backbone.dim, projector), embedding_dim=projector[-1])
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=global_negatives)

    def training_loss(self, views: Sequence[torch.Tensor], *, progress: float) -> torch.Tensor:
        z_a, z_b = (self.projector(self.backbone(view)) for view in views)
        return self.criterion(z_a, z_b)


class NotAMethod:
    hyperparameters = ContrastParams


registry.register_method("test_contrast", Contrast)


def _config(name: str, **extra: object):
    return load_config(
        data={
            "name": "plugin-method",
            "data": {"image_size": 8},
            "method": {"name": name, "params": {"temperature": 0.2}},
            "model": {"projector": [32, 16]},
            "search": {"space": {"method.params.temperature": {"values": [0.1, 0.3]}}},
            **extra,
        }
    )


def test_an_import_path_and_a_registered_name_resolve_to_the_class() -> None:
    for name in (f"{MODULE}:Contrast", "test_contrast"):
        config = _config(name)
        assert config.method.name == f"{MODULE}:Contrast"  # what sweeper.yaml saves, and trials import
        assert config.method.params == {"temperature": 0.2, "global_negatives": True}  # defaults filled
        assert config.search.space["method.params.temperature"].values == [0.1, 0.3]


def test_the_hyperparameters_are_validated_like_a_builtins() -> None:
    with pytest.raises(
        ConfigError,
        match=r"method.params.temprature: .*has no hyperparameter 'temprature' \(did you mean 'temperature'",
    ):
        load_config(data={"name": "x", "method": {"name": "test_contrast", "params": {"temprature": 1.0}}})
    with pytest.raises(ConfigError, match="method.params.temperature: Input should be greater than 0"):
        load_config(data={"name": "x", "method": {"name": "test_contrast", "params": {"temperature": -1.0}}})
    with pytest.raises(ConfigError, match=r"search.space.*'temprature'.*did you mean 'temperature'"):
        load_config(
            data={
                "name": "x",
                "method": {"name": "test_contrast"},
                "search": {"space": {"method.params.temprature": {"values": [0.1]}}},
            }
        )
    with pytest.raises(ConfigError, match="not a subclass of sweeper.SSLMethod"):
        _config(f"{MODULE}:NotAMethod")
    with pytest.raises(ConfigError, match=r"has no attribute 'Contrst' \(did you mean 'Contrast'"):
        _config(f"{MODULE}:Contrst")


def test_registering_refuses_builtin_names_local_classes_and_a_second_target() -> None:
    with pytest.raises(ConfigError, match="'vicreg' is a built-in method and cannot be shadowed"):
        registry.register_method("vicreg", Contrast)

    class Local(Contrast):
        pass

    with pytest.raises(ConfigError, match="inside a function"):
        registry.register_method("test_local", Local)
    with pytest.raises(ConfigError, match="already registered"):
        registry.register_method("test_contrast", registry.method_class("simclr"))


def _distribution(root: Path, name: str, entry: str) -> None:
    info = root / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[sweeper.methods]\n{entry}\n")


def test_entry_points_resolve_never_shadow_a_builtin_and_a_clash_names_both(tmp_path, monkeypatch) -> None:
    _distribution(tmp_path, "contrast_pkg", f"test_contrast_ep = {MODULE}:Contrast\nvicreg = {MODULE}:Contrast")
    monkeypatch.syspath_prepend(str(tmp_path))
    component = registry.resolve("method", "test_contrast_ep")
    assert (component.target, component.source) == (f"{MODULE}:Contrast", "entry point of contrast_pkg 1.0")
    assert registry.resolve("method", "vicreg").source == "built-in"
    ignored = [c for c in registry.available("method") if c.name == "vicreg" and c.source != "built-in"]
    assert ignored and "ignored" in ignored[0].source
    _distribution(tmp_path, "other_pkg", "test_contrast_ep = other_pkg.method:Other")
    with pytest.raises(ConfigError, match="contrast_pkg 1.0 and other_pkg 1.0|other_pkg 1.0 and contrast_pkg 1.0"):
        registry.resolve("method", "test_contrast_ep")


def test_a_plugin_passes_the_contract_and_per_rank_negatives_fail_the_two_process_check(one_thread) -> None:
    check_method(Contrast, distributed=False)
    good = method_config(f"{MODULE}:Contrast")
    per_rank = method_config(f"{MODULE}:Contrast", params={"global_negatives": False})
    ok, broken = ddp_equivalence([good, per_rank])
    assert ok.problem is None and ok.max_weight_difference <= 1e-5 and ok.moved > 1e-3
    assert broken.problem is not None and "gather_distributed" in broken.problem
