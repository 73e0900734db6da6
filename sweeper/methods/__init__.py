"""SSL methods, one per file, and :func:`build_method`, which builds the config's method.

The built-in names, and the classes they name, are declared once in
:data:`sweeper.registry.BUILTIN_METHODS`; a plugin method (an :class:`SSLMethod` subclass
registered, installed as an entry point, or named by its import path) is built the same way.
"""

from __future__ import annotations

from sweeper import registry
from sweeper.config import SweeperConfig
from sweeper.methods.base import SSLMethod
from sweeper.models import build_backbone

__all__ = ["SSLMethod", "build_method", "method_class"]


def method_class(name: str) -> type[SSLMethod]:
    """The class of the method target ``name`` (a built-in name or ``module:Class``)."""
    return registry.method_class(name)


def build_method(config: SweeperConfig, *, in_channels: int) -> SSLMethod:
    """The method ``config.method.name`` with its backbone, heads and hyperparameters."""
    model = config.model
    backbone = build_backbone(
        model.backbone,
        in_channels=in_channels,
        image_size=config.data.image_size,
        cifar_stem=model.cifar_stem,
        args=model.backbone_args,
        pretrained=model.pretrained,
    )
    cls = method_class(config.method.name)
    return cls(backbone, projector=model.projector, **config.method.params)
