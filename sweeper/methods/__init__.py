"""SSL methods, one per file, by registry name.

The method names are declared once, as the keys of :data:`sweeper.hyperparams.METHOD_PARAMS`;
:data:`METHODS` is in that order and checked against it (and each class's keyword arguments
against its hyperparameters) at import, so the registry, the config and the classes cannot drift.
"""

from __future__ import annotations

import inspect

from sweeper.config import SweeperConfig
from sweeper.hyperparams import METHOD_PARAMS
from sweeper.methods.barlow_twins import BarlowTwins
from sweeper.methods.base import SSLMethod
from sweeper.methods.byol import BYOL
from sweeper.methods.carp import CARP
from sweeper.methods.dino import DINO
from sweeper.methods.simclr import SimCLR
from sweeper.methods.swav import SwAV
from sweeper.methods.vicreg import VICReg
from sweeper.methods.vicreg_ctr import VICRegCtr
from sweeper.methods.vicreg_exp import VICRegExp
from sweeper.models import build_backbone

__all__ = ["METHODS", "SSLMethod", "build_method"]

# Arguments every method takes besides its hyperparameters.
_COMMON_ARGUMENTS = {"self", "backbone", "projector"}


def _registry(*classes: type[SSLMethod]) -> dict[str, type[SSLMethod]]:
    by_name = {cls.name: cls for cls in classes}
    if set(by_name) != set(METHOD_PARAMS) or len(by_name) != len(classes):
        raise ImportError(
            f"method classes {sorted(cls.name for cls in classes)} do not match "
            f"sweeper.hyperparams.METHOD_PARAMS {sorted(METHOD_PARAMS)}"
        )
    for name, cls in by_name.items():
        arguments = set(inspect.signature(cls.__init__).parameters) - _COMMON_ARGUMENTS
        if arguments != set(METHOD_PARAMS[name].model_fields):
            raise ImportError(f"{cls.__name__} takes {sorted(arguments)}, METHOD_PARAMS[{name!r}] lists others")
    return {name: by_name[name] for name in METHOD_PARAMS}


METHODS: dict[str, type[SSLMethod]] = _registry(
    SimCLR, VICReg, VICRegExp, VICRegCtr, BarlowTwins, BYOL, DINO, SwAV, CARP
)


def build_method(config: SweeperConfig, *, in_channels: int) -> SSLMethod:
    """The method ``config.method.name`` with its backbone, heads and hyperparameters."""
    backbone = build_backbone(
        config.model.backbone,
        in_channels=in_channels,
        image_size=config.data.image_size,
        cifar_stem=config.model.cifar_stem,
    )
    cls = METHODS[config.method.name]
    return cls(backbone, projector=config.model.projector, **config.method.params)
