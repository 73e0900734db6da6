"""Backbones and heads by registry name."""

from sweeper.models.backbones import Backbone, build_backbone
from sweeper.models.heads import build_projector, build_prototype_head, prototype_weights

__all__ = ["Backbone", "build_backbone", "build_projector", "build_prototype_head", "prototype_weights"]
