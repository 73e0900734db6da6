"""SSL methods, one per file, by registry name."""

from __future__ import annotations

from sweeper.config import SweeperConfig
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

METHODS: dict[str, type[SSLMethod]] = {
    cls.name: cls for cls in (SimCLR, VICReg, VICRegExp, VICRegCtr, BarlowTwins, BYOL, DINO, SwAV, CARP)
}


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
