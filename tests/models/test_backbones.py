"""Backbones by registry name: output shapes, ``dim``, stems and the ViT-S/16 configuration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sweeper.models import build_backbone
from sweeper.models.backbones import vit_patch_size

pytestmark = pytest.mark.usefixtures("one_thread")


def _features(name: str, channels: int, size: int, **kwargs) -> tuple[torch.Tensor, int, nn.Module]:
    torch.manual_seed(0)
    backbone = build_backbone(name, in_channels=channels, image_size=size, **kwargs)
    backbone.module.eval()
    with torch.no_grad():
        out = backbone.module(torch.rand(2, channels, size, size))
    return out, backbone.dim, backbone.module


PATCHES = [(8, 1), (16, 2), (32, 4), (64, 8), (96, 12), (224, 16), (100, 10)]


@pytest.mark.parametrize(("size", "patch"), PATCHES)
def test_vit_patch_size(size, patch) -> None:
    assert vit_patch_size(size) == patch
    assert size % patch == 0


@pytest.mark.parametrize(("channels", "size"), [(1, 16), (3, 32)])
def test_vit_s16_is_vit_small(channels, size) -> None:
    out, dim, net = _features("vit_s16", channels, size)
    assert out.shape == (2, 384) and dim == 384 and torch.isfinite(out).all()
    assert net.hidden_dim == 384 and net.patch_size == vit_patch_size(size)
    assert len(net.encoder.layers) == 12
    block = net.encoder.layers[0]
    assert block.self_attention.num_heads == 6
    assert block.mlp[0].out_features == 1536
    assert net.conv_proj.in_channels == channels
    # ViT-S has 21.7 M parameters at 224 px; fewer position embeddings here
    assert 21e6 < sum(p.numel() for p in net.parameters()) < 22.5e6


@pytest.mark.parametrize(("channels", "size", "cifar_stem"), [(1, 16, None), (3, 64, False)])
def test_resnet50(channels, size, cifar_stem) -> None:
    out, dim, net = _features("resnet50", channels, size, cifar_stem=cifar_stem)
    assert out.shape == (2, 2048) and dim == 2048 and torch.isfinite(out).all()
    assert net.conv1.in_channels == channels
    small = size <= 64 if cifar_stem is None else cifar_stem
    assert net.conv1.kernel_size == ((3, 3) if small else (7, 7))
    assert isinstance(net.maxpool, nn.Identity) is small
    assert isinstance(net.fc, nn.Identity)


def test_resnet50_trains_on_batches(channels: int = 3) -> None:
    torch.manual_seed(0)
    backbone = build_backbone("resnet50", in_channels=channels, image_size=16)
    out = backbone.module(torch.rand(4, channels, 16, 16))
    out.sum().backward()
    assert backbone.module.conv1.weight.grad is not None


def test_unknown_backbone_names_the_available_ones() -> None:
    with pytest.raises(ValueError, match="vit_s16"):
        build_backbone("vit_b16", in_channels=3, image_size=32)
