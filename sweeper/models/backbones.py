"""Backbones: a small CNN for tiny images, torchvision's ResNets and ViT-S/16.

A backbone maps images (B, C, H, W) to representations (B, D); ``Backbone.dim`` is D, the
dimension RankMe of the representation is bounded by and the embedding RankMe is clipped at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

__all__ = ["BACKBONES", "Backbone", "build_backbone", "vit_patch_size"]


@dataclass
class Backbone:
    module: nn.Module
    dim: int


def build_backbone(name: str, *, in_channels: int, image_size: int, cifar_stem: bool | None = None) -> Backbone:
    """Build the backbone ``name`` for ``in_channels``-channel images of side ``image_size``."""
    if name == "small_cnn":
        return Backbone(_SmallCNN(in_channels), _SmallCNN.dim)
    if name in {"resnet18", "resnet50"}:
        return _resnet(name, in_channels, image_size <= 64 if cifar_stem is None else cifar_stem)
    if name == "vit_s16":
        return _vit_s16(in_channels, image_size)
    raise ValueError(f"backbone {name!r} is not implemented (available: {', '.join(BACKBONES)})")


BACKBONES = ("small_cnn", "resnet18", "resnet50", "vit_s16")


class _SmallCNN(nn.Module):
    """Three 3×3 conv blocks (32-64-128 channels, the last two stride-2), global average pooling.

    Sized for 8–32 px inputs: 0.1 M parameters, ~2.5 MFLOPs per 16×16 image, so a digits
    epoch takes about a second on one CPU core.
    """

    dim = 128

    def __init__(self, in_channels: int) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(in_channels, 32, 1),
            block(32, 64, 2),
            block(64, self.dim, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _resnet(name: str, in_channels: int, cifar_stem: bool) -> Backbone:
    from torchvision import models

    net = getattr(models, name)(weights=None)
    dim = net.fc.in_features
    if cifar_stem:
        # CIFAR variant (SimCLR paper, App. B.9): 3×3 stride-1 stem, no max-pool.
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return Backbone(net, dim)


def vit_patch_size(image_size: int) -> int:
    """ViT-S/16's patch size adapted to the image side.

    16 px patches from 128 px up (ImageNet 224 px → 14 × 14 tokens: ViT-S/16 proper). Smaller
    images would leave a grid of 4 × 4 tokens or fewer, so there the patch is about a
    eighth of the side, keeping an 8 × 8 token grid as ViTs trained on CIFAR do: 96 px (STL-10)
    → 12, 32 px (CIFAR) → 4, 16 px (digits) → 2, 8 px → 1. The side must be a multiple of the
    patch; the largest divisor of ``image_size`` not above that target is taken.
    """
    if image_size >= 128 and image_size % 16 == 0:
        return 16
    patch = max(1, min(16, image_size // 8))
    while image_size % patch:
        patch -= 1
    return patch


def _vit_s16(in_channels: int, image_size: int) -> Backbone:
    """torchvision's ``VisionTransformer`` configured as ViT-S/16 (Touvron et al. 2021, the DINO
    backbone): width 384, 12 layers, 6 heads, MLP 1536, patch size from :func:`vit_patch_size`.

    The representation is the final [CLS] token after the encoder's LayerNorm (B, 384), as DINO
    evaluates it. Inputs of other sides (multi-crop's local views) get interpolated position
    embeddings (:class:`_ViT`).
    """
    patch = vit_patch_size(image_size)
    hidden = 384
    net = _ViT(
        image_size=image_size,
        patch_size=patch,
        num_layers=12,
        num_heads=6,
        hidden_dim=hidden,
        mlp_dim=1536,
    )
    if in_channels != 3:
        net.conv_proj = nn.Conv2d(in_channels, hidden, kernel_size=patch, stride=patch)
        fan_in = in_channels * patch * patch  # torchvision's initialisation of the patch embedding
        nn.init.trunc_normal_(net.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(net.conv_proj.bias)
    net.heads = nn.Identity()
    return Backbone(net, hidden)


class _ViT(VisionTransformer):
    """torchvision's ``VisionTransformer`` for any input side: at ``image_size`` it computes exactly
    torchvision's forward; for another side (a multiple of the patch) the patch grid's position
    embeddings are bicubically resized to the input's grid, as DINO's ``interpolate_pos_encoding``
    does for its 96² local crops."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)  # (n, grid cells, hidden)
        tokens = torch.cat([self.class_token.expand(n, -1, -1), tokens], dim=1)
        encoder = self.encoder
        tokens = tokens + self._position_embedding(h // self.patch_size, w // self.patch_size)
        tokens = encoder.ln(encoder.layers(encoder.dropout(tokens)))
        return self.heads(tokens[:, 0])

    def _position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        embedding = self.encoder.pos_embedding  # (1, 1 + side², hidden): [CLS], then the grid
        side = self.image_size // self.patch_size
        if (rows, cols) == (side, side):
            return embedding
        grid = embedding[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
        return torch.cat([embedding[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
