"""Backbones: a small CNN for tiny images, torchvision's ResNets and ViT-S/16 built in; any
timm or torchvision classifier by name; any factory of a plugin.

A backbone maps images (B, C, H, W) to representations (B, D); ``Backbone.dim`` is D, the
dimension RankMe of the representation is bounded by and the embedding RankMe is clipped at.
D is always **measured**, by one forward of a dummy batch (:func:`representation_width`):
declared widths (timm's ``num_features``) differ from the pooled output for some models.

:func:`build_backbone` takes, by ``model.backbone``:

* a built-in name (:data:`sweeper.registry.BUILTIN_BACKBONES`);
* ``timm/<name>``: ``timm.create_model(name, pretrained=False, num_classes=0,
  in_chans=C, **backbone_args)`` (``img_size`` set to ``data.image_size`` for models with a
  fixed input size, such as ViTs; ``num_classes`` and ``in_chans`` are not backbone args; timm is
  the optional extra ``sweeper[timm]``);
* ``torchvision/<name>``, one of its classification models:
  ``torchvision.models.get_model(name, weights=None, **backbone_args)`` with its classifier (the
  last linear layer) replaced by the identity and, for C ≠ 3, its first convolution rebuilt for C
  channels (``image_size`` set for ``vit_*``, auxiliary heads off for GoogLeNet and Inception v3);
* a factory (registered, entry point or ``module:factory``) called as
  ``factory(*, in_channels, image_size, **backbone_args) -> nn.Module``.

Weights are never downloaded: ``model.pretrained`` is a local file (a state dict, or a
checkpoint holding one under ``state_dict`` or ``model``) loaded into the built module; the
backbone must have every weight the file is missing none of (extra keys, such as a
classifier's, are ignored).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from sweeper import registry
from sweeper.errors import ConfigError

__all__ = ["Backbone", "build_backbone", "representation_width", "vit_patch_size"]


@dataclass
class Backbone:
    module: nn.Module
    dim: int


def build_backbone(
    name: str,
    *,
    in_channels: int,
    image_size: int,
    cifar_stem: bool | None = None,
    args: Mapping[str, Any] | None = None,
    pretrained: str | Path | None = None,
) -> Backbone:
    """Build the backbone ``name`` (see the module docstring) for ``in_channels``-channel
    images of side ``image_size``, with ``args`` (``model.backbone_args``) and the weights of
    the local file ``pretrained``.

    Raises:
        ConfigError: unknown arguments, a model that fails on or does not give (B, D) for a
            dummy batch, a weights file that does not fit.
    """
    args = dict(args or {})
    what = f"model.backbone {name}"
    if registry.is_builtin("backbone", name):
        factory = registry.load("backbone", name)
        module = registry.call_with_kwargs(
            factory, what, in_channels=in_channels, image_size=image_size, cifar_stem=cifar_stem, **args
        )
    elif name.startswith("timm/"):
        module = _timm(name.removeprefix("timm/"), in_channels=in_channels, image_size=image_size, args=args)
    elif name.startswith("torchvision/"):
        module = _torchvision(
            name.removeprefix("torchvision/"), in_channels=in_channels, image_size=image_size, args=args
        )
    else:
        factory = registry.load("backbone", name)
        module = registry.call_with_kwargs(factory, what, in_channels=in_channels, image_size=image_size, **args)
        if not isinstance(module, nn.Module):
            raise ConfigError(f"{what}: the factory returned {type(module).__name__}, not a torch.nn.Module")
    if pretrained is not None:
        _load_weights(module, Path(pretrained), what=what)
    return Backbone(module, representation_width(module, in_channels=in_channels, image_size=image_size, name=name))


def representation_width(module: nn.Module, *, in_channels: int, image_size: int, name: str = "backbone") -> int:
    """D of the (B, D) representations ``module`` gives, from one forward of a dummy batch of
    two zero images in eval mode (no statistics updated, no random number drawn).

    Raises:
        ConfigError: the forward fails, or its output is not a (2, D) tensor.
    """
    shape = (2, in_channels, image_size, image_size)
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            output = module(torch.zeros(shape))
    except Exception as exc:  # noqa: BLE001 - any model code may fail on the wrong input
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(
            f"model.backbone {name} fails on a dummy batch {tuple(shape)} ({type(exc).__name__}: {first}): "
            "check data.image_size, the channels and model.backbone_args"
        ) from None
    finally:
        module.train(training)
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[0] != shape[0]:
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ConfigError(
            f"model.backbone {name} returns {got} for a dummy batch {tuple(shape)}: a backbone must map images to "
            "(B, D) representations (pool and flatten its output)"
        )
    return int(output.shape[1])


def small_cnn(*, in_channels: int, image_size: int, cifar_stem: bool | None = None) -> nn.Module:
    """The built-in ``small_cnn`` (128-d): see :class:`_SmallCNN`."""
    return _SmallCNN(in_channels)


def resnet18(*, in_channels: int, image_size: int, cifar_stem: bool | None = None) -> nn.Module:
    """The built-in ``resnet18`` (512-d): torchvision's, CIFAR stem for images ≤ 64 px by default."""
    return _resnet("resnet18", in_channels, image_size <= 64 if cifar_stem is None else cifar_stem)


def resnet50(*, in_channels: int, image_size: int, cifar_stem: bool | None = None) -> nn.Module:
    """The built-in ``resnet50`` (2048-d): torchvision's, CIFAR stem for images ≤ 64 px by default."""
    return _resnet("resnet50", in_channels, image_size <= 64 if cifar_stem is None else cifar_stem)


def vit_s16(*, in_channels: int, image_size: int, cifar_stem: bool | None = None) -> nn.Module:
    """The built-in ``vit_s16`` (384-d): see :func:`_vit_s16`."""
    return _vit_s16(in_channels, image_size)


def _timm(model_name: str, *, in_channels: int, image_size: int, args: dict[str, Any]) -> nn.Module:
    import timm

    _check_reserved(f"timm/{model_name}", args, num_classes="0: the pooled features", in_chans="the data's channels")
    kwargs: dict[str, Any] = {**args, "num_classes": 0, "in_chans": in_channels, "pretrained": False}
    config = timm.models.get_pretrained_cfg(model_name)
    if config is not None and config.fixed_input_size and "img_size" not in args:
        kwargs["img_size"] = image_size  # ViTs and the like: position embeddings for this side
    try:
        return timm.create_model(model_name, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model.backbone_args: timm/{model_name} does not take them ({exc})") from None


def _check_reserved(model: str, args: Mapping[str, Any], **reserved: str) -> None:
    """Refuse ``backbone_args`` that sweeper sets itself (``reserved``: each key's value and
    why) and any ``pretrained``/``weights`` that would download weights.

    Raises:
        ConfigError: the first such key.
    """
    for key, value in reserved.items():
        if key in args:
            raise ConfigError(f"model.backbone_args: {key} of {model} is set by sweeper ({value}): remove it")
    for key in ("pretrained", "weights", "weights_backbone"):
        if args.get(key) not in (None, False):
            raise ConfigError(
                f"model.backbone_args: {key} of {model} would download weights: remove it and set "
                "model.pretrained to a local weights file"
            )


# torchvision classifiers with auxiliary heads (and a namedtuple output in training mode).
_AUXILIARY_HEADS = ("googlenet", "inception_v3")


def _torchvision(model_name: str, *, in_channels: int, image_size: int, args: dict[str, Any]) -> nn.Module:
    from torchvision import models

    if model_name not in models.list_models(module=models):
        # Detection, segmentation and video builders download ImageNet weights for their trunk.
        raise ConfigError(f"model.backbone: torchvision/{model_name} is not one of torchvision's classification models")
    _check_reserved(f"torchvision/{model_name}", args)
    kwargs = {k: v for k, v in args.items() if k != "weights"}
    if model_name.startswith("vit_"):
        kwargs.setdefault("image_size", image_size)
    if model_name in _AUXILIARY_HEADS:
        kwargs.setdefault("aux_logits", False)  # else training mode returns a tuple of logits
    try:
        net = models.get_model(model_name, weights=None, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model.backbone_args: torchvision/{model_name} does not take them ({exc})") from None
    classifier = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if classifier:
        _replace(net, classifier[-1], nn.Identity())
    if in_channels != 3:
        first = next((n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3), None)
        if first is not None:
            old = net.get_submodule(first)
            _replace(
                net,
                first,
                nn.Conv2d(
                    in_channels,
                    old.out_channels,
                    old.kernel_size,
                    stride=old.stride,
                    padding=old.padding,
                    dilation=old.dilation,
                    bias=old.bias is not None,
                    padding_mode=old.padding_mode,
                ),
            )
    return net


def _replace(net: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, new)


def _load_weights(module: nn.Module, path: Path, *, what: str) -> None:
    """Load the state dict in the local file ``path`` into ``module`` (see the module docstring)."""
    if not path.is_file():
        raise ConfigError(f"model.pretrained: {path} is not a file: point it at a local weights file")
    state = _read_weights(path)
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise ConfigError(f"model.pretrained: {path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        missing, _ = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [""])[-1].strip()[:200]
        raise ConfigError(f"model.pretrained: {path} does not fit {what} ({first})") from None
    if missing:
        raise ConfigError(
            f"model.pretrained: {path} lacks {len(missing)} weights of {what} (e.g. {missing[:3]}): is it a "
            "checkpoint of this model?"
        )


def _read_weights(path: Path) -> Any:
    """What the weights file ``path`` holds: safetensors by its suffix, else ``torch.load``
    without unpickling arbitrary objects.

    Raises:
        ConfigError: the file is not one of these formats (or safetensors is not installed).
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise ConfigError(f"model.pretrained: {path} needs safetensors: pip install safetensors") from None
    except Exception as exc:  # noqa: BLE001 - torch and safetensors raise many kinds for a bad file
        raise ConfigError(f"model.pretrained: {path} is not a weights file ({type(exc).__name__})") from None


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


def _resnet(name: str, in_channels: int, cifar_stem: bool) -> nn.Module:
    from torchvision import models

    net = getattr(models, name)(weights=None)
    if cifar_stem:
        # CIFAR variant (SimCLR paper, App. B.9): 3×3 stride-1 stem, no max-pool.
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net


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


def _vit_s16(in_channels: int, image_size: int) -> nn.Module:
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
    return net


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
