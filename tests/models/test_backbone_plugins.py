"""Backbones beyond the built-ins: timm and torchvision models by name, ``module:factory``
plugins, local pretrained weights, the config checks of these names, and one engine run.

Every width is compared with an independent forward of the model as timm or torchvision
builds it, never with a number copied from their documentation.
"""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tv_models

from sweeper.config import ConfigError, load_config
from sweeper.models import build_backbone

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = "tests.models.test_backbone_plugins"


# --- plugin factories, importable as tests.models.test_backbone_plugins:<name> -----------------


def pooled_cnn(*, in_channels: int, image_size: int, width: int = 8) -> nn.Module:
    """A (B, width) backbone: one conv, global average pooling."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def spatial_cnn(*, in_channels: int, image_size: int) -> nn.Module:
    """Forgets to pool: (B, C, H, W)."""
    return nn.Conv2d(in_channels, 4, 3, padding=1)


def not_a_module(*, in_channels: int, image_size: int) -> object:
    return lambda x: x.flatten(1)


# --- helpers -----------------------------------------------------------------------------------


def _width(module: nn.Module, channels: int, size: int, batch: int = 3) -> tuple[int, torch.Tensor]:
    """The output width of an eval-mode forward of a random batch, and the output."""
    module.eval()
    with torch.no_grad():
        out = module(torch.rand(batch, channels, size, size))
    assert out.ndim == 2 and out.shape[0] == batch, tuple(out.shape)
    return int(out.shape[1]), out


def _digits(size: int, n: int = 5) -> torch.Tensor:
    """n real handwritten digits (sklearn's 8x8, 1 channel) resized to size px, in [0, 1]."""
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def _config(model: dict, **sections) -> dict:
    return {
        "name": "backbone-plugins",
        "data": {"image_size": 16},
        "model": {"projector": [32, 16], **model},
        "selection": {"rule": "max"},
        **sections,
    }


# --- timm --------------------------------------------------------------------------------------


def test_timm_resnet10t_one_channel_dim_is_measured() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("timm/resnet10t", in_channels=1, image_size=16)
    width, _ = _width(backbone.module, 1, 16)
    assert backbone.dim == width
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=0, in_chans=1)
    assert backbone.dim == _width(reference, 1, 16)[0]
    assert isinstance(backbone.module, type(reference))
    images = _digits(16)
    backbone.module.train()
    out = backbone.module(images)
    assert out.shape == (len(images), backbone.dim) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in backbone.module.parameters() if p.requires_grad)


def test_timm_dim_is_the_pooled_width_not_num_features() -> None:
    # mobilenetv3_small_100 keeps its 1x1 conv head (576 -> 1024) with num_classes=0: timm's
    # num_features is 576, the pooled output 1024 (timm PR #2195).
    torch.manual_seed(0)
    reference = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=0, in_chans=3)
    actual, _ = _width(reference, 3, 32)
    assert reference.num_features != actual  # else this model no longer shows the difference
    backbone = build_backbone("timm/mobilenetv3_small_100", in_channels=3, image_size=32)
    assert backbone.dim == actual and backbone.dim != reference.num_features
    assert _width(backbone.module, 3, 32)[0] == backbone.dim


def test_timm_vit_gets_the_image_size() -> None:
    torch.manual_seed(0)
    size, patch = 32, 4
    backbone = build_backbone("timm/vit_tiny_patch16_224", in_channels=3, image_size=size, args={"patch_size": patch})
    net = backbone.module
    assert tuple(net.patch_embed.img_size) == (size, size)
    tokens = (size // patch) ** 2 + net.num_prefix_tokens
    assert net.pos_embed.shape[1] == tokens
    width, out = _width(net, 3, size, batch=2)
    assert backbone.dim == width == net.embed_dim == 192
    assert out.shape == (2, 192) and torch.isfinite(out).all()


def test_timm_args_sweeper_sets_are_refused() -> None:
    # num_classes=10 used to replace num_classes=0 silently: dim 10, the logits of a random head.
    for args, key in (({"num_classes": 10}, "num_classes"), ({"in_chans": 3}, "in_chans")):
        with pytest.raises(ConfigError, match=f"model.backbone_args: {key} of timm/resnet10t"):
            build_backbone("timm/resnet10t", in_channels=1, image_size=16, args=args)
    with pytest.raises(ConfigError, match="model.pretrained"):
        build_backbone("timm/resnet10t", in_channels=1, image_size=16, args={"pretrained": True})


# --- torchvision -------------------------------------------------------------------------------


def test_torchvision_resnet18_one_channel() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("torchvision/resnet18", in_channels=1, image_size=32)
    net = backbone.module
    assert backbone.dim == tv_models.resnet18().fc.in_features == 512
    assert net.conv1.in_channels == 1
    assert not any(isinstance(m, nn.Linear) for m in net.modules())
    assert not any(isinstance(m, nn.Conv2d) and m.in_channels == 3 for m in net.modules())
    width, out = _width(net, 1, 32)
    assert width == backbone.dim and torch.isfinite(out).all()


def test_torchvision_mobilenet_v3_small_dim_is_the_hidden_width() -> None:
    torch.manual_seed(0)
    reference = tv_models.mobilenet_v3_small()
    hidden = reference.classifier[-1].in_features  # the width before the last Linear (1024)
    backbone = build_backbone("torchvision/mobilenet_v3_small", in_channels=3, image_size=32)
    assert backbone.dim == hidden == _width(backbone.module, 3, 32)[0]
    assert hidden != reference.classifier[0].in_features  # not the 576 pooled conv features
    assert isinstance(backbone.module.classifier[-1], nn.Identity)
    assert isinstance(backbone.module.classifier[0], nn.Linear)  # the hidden layer is kept


@pytest.mark.filterwarnings("ignore:The default weight initialization of GoogleNet:FutureWarning")
def test_torchvision_googlenet_trains_to_a_tensor() -> None:
    # GoogLeNet's auxiliary heads make its training-mode output a namedtuple of logits.
    torch.manual_seed(0)
    backbone = build_backbone("torchvision/googlenet", in_channels=1, image_size=32)
    backbone.module.train()
    out = backbone.module(torch.rand(2, 1, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, backbone.dim)
    assert backbone.dim == tv_models.googlenet(aux_logits=False, init_weights=True).fc.in_features


def test_torchvision_detection_model_is_refused_without_download() -> None:
    # Its builder would download ImageNet weights for the trunk (an URLError offline).
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    assert name in tv_models.list_models() and name not in tv_models.list_models(module=tv_models)
    with pytest.raises(ConfigError, match="classification"):
        build_backbone(f"torchvision/{name}", in_channels=3, image_size=32)
    with pytest.raises(ConfigError, match="model.pretrained"):
        build_backbone("torchvision/resnet18", in_channels=3, image_size=32, args={"weights": "DEFAULT"})


# --- module:factory plugins --------------------------------------------------------------------


def test_factory_backbone_gets_its_args() -> None:
    torch.manual_seed(0)
    backbone = build_backbone(f"{HERE}:pooled_cnn", in_channels=1, image_size=16, args={"width": 12})
    assert backbone.dim == _width(backbone.module, 1, 16)[0] == 12
    conv = backbone.module[0]
    assert conv.in_channels == 1 and conv.out_channels == 12
    default = build_backbone(f"{HERE}:pooled_cnn", in_channels=3, image_size=16)
    assert default.dim == _width(pooled_cnn(in_channels=3, image_size=16), 3, 16)[0]


def test_factory_unknown_arg_names_the_accepted_ones() -> None:
    with pytest.raises(ConfigError, match="depth") as error:
        build_backbone(f"{HERE}:pooled_cnn", in_channels=1, image_size=16, args={"depth": 3})
    message = str(error.value)
    assert "\n" not in message
    for name in ("in_channels", "image_size", "width"):
        assert repr(name) in message


def test_factory_spatial_output_is_refused() -> None:
    with pytest.raises(ConfigError, match=re.escape("(B, D)")) as error:
        build_backbone(f"{HERE}:spatial_cnn", in_channels=1, image_size=8)
    shape = tuple(spatial_cnn(in_channels=1, image_size=8)(torch.zeros(2, 1, 8, 8)).shape)
    assert str(shape) in str(error.value)  # the (B, C, H, W) it gave


def test_factory_non_module_is_refused() -> None:
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        build_backbone(f"{HERE}:not_a_module", in_channels=1, image_size=8)


# --- pretrained weights ------------------------------------------------------------------------


def _small_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_backbone("small_cnn", in_channels=1, image_size=16).module


def _save(state: dict, path, form: str) -> None:
    if form == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return
    wrapped = {
        "plain": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "optimizer": {}},
        "module.": {f"module.{k}": v for k, v in state.items()},
    }[form]
    torch.save(wrapped, path)


@pytest.mark.parametrize("form", ["plain", "state_dict", "model", "module.", "safetensors"])
def test_pretrained_weights_are_loaded(tmp_path, form) -> None:
    if form == "safetensors":
        pytest.importorskip("safetensors")
    source = _small_cnn(seed=1)
    with torch.no_grad():  # running statistics too, as a trained backbone has
        for buffer in source.buffers():
            buffer.add_(torch.rand_like(buffer, dtype=torch.float32).to(buffer.dtype) + 1)
    saved = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / ("weights.safetensors" if form == "safetensors" else "weights.pt")
    _save(saved, path, form)
    torch.manual_seed(2)
    loaded = build_backbone("small_cnn", in_channels=1, image_size=16, pretrained=path).module.state_dict()
    fresh = _small_cnn(seed=2).state_dict()
    assert loaded.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key
    assert any(not torch.equal(fresh[k], saved[k]) for k in saved if saved[k].is_floating_point())


def test_pretrained_of_another_architecture_names_missing_weights(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save(pooled_cnn(in_channels=1, image_size=16).state_dict(), path)
    # None of its keys is in the file; torch fills a missing BatchNorm num_batches_tracked itself.
    expected = [k for k in _small_cnn(seed=0).state_dict() if not k.endswith("num_batches_tracked")]
    with pytest.raises(ConfigError, match="model.pretrained") as error:
        build_backbone("small_cnn", in_channels=1, image_size=16, pretrained=path)
    message = str(error.value)
    assert f"lacks {len(expected)} weights" in message and expected[0] in message


def test_pretrained_of_other_shapes_does_not_fit(tmp_path) -> None:
    path = tmp_path / "narrow.pt"
    torch.save(pooled_cnn(in_channels=1, image_size=16, width=8).state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit"):
        build_backbone(f"{HERE}:pooled_cnn", in_channels=1, image_size=16, args={"width": 12}, pretrained=path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pretrained_text_file_is_refused(tmp_path, suffix) -> None:
    path = tmp_path / f"notes{suffix}"
    path.write_text("not weights\n")
    with pytest.raises(ConfigError, match="model.pretrained: .* is not a weights file"):
        build_backbone("small_cnn", in_channels=1, image_size=16, pretrained=path)


def test_pretrained_missing_file_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="model.pretrained: .* is not a file"):
        build_backbone("small_cnn", in_channels=1, image_size=16, pretrained=tmp_path / "none.pt")


@pytest.mark.parametrize(
    ("backbone", "args"),
    [("timm/resnet10t", {"pretrained": True}), ("torchvision/resnet18", {"weights": "IMAGENET1K_V1"})],
)
def test_config_refuses_downloads(backbone, args) -> None:
    with pytest.raises(ConfigError, match="model.pretrained") as error:
        load_config(data=_config({"backbone": backbone, "backbone_args": args}))
    assert str(error.value).startswith("model.backbone_args") and "\n" not in str(error.value)


def test_config_refuses_a_missing_weights_file() -> None:
    with pytest.raises(ConfigError, match="model.pretrained") as error:
        load_config(data=_config({"pretrained": "/no/such/file"}))
    assert "/no/such/file" in str(error.value)


def test_config_accepts_an_existing_weights_file(tmp_path) -> None:
    path = tmp_path / "w.pt"
    torch.save(_small_cnn(seed=0).state_dict(), path)
    assert load_config(data=_config({"pretrained": str(path)})).model.pretrained == path


# --- config checks of the names ----------------------------------------------------------------


def _names(message: str, family: str) -> list[str]:
    return re.findall(rf"'{family}/([\w.]+)'", message)


def test_config_unknown_timm_model_suggests_close_names() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(data=_config({"backbone": "timm/resnet10tt"}))
    message = str(error.value)
    assert message.startswith("model.backbone") and "\n" not in message
    suggested = _names(message, "timm")
    assert "resnet10t" in suggested and all(timm.is_model(n) for n in suggested)


def test_config_timm_not_installed(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ConfigError, match=re.escape('pip install "sweeper[timm]"')) as error:
        load_config(data=_config({"backbone": "timm/resnet10t"}))
    assert str(error.value).startswith("model.backbone") and "\n" not in str(error.value)


def test_config_unknown_torchvision_model_suggests_close_names() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(data=_config({"backbone": "torchvision/resnet181"}))
    message = str(error.value)
    assert message.startswith("model.backbone") and "\n" not in message
    suggested = _names(message, "torchvision")
    assert "resnet18" in suggested
    assert set(suggested) <= set(tv_models.list_models(module=tv_models))


def test_config_torchvision_detection_model_is_refused() -> None:
    with pytest.raises(ConfigError, match="classification"):
        load_config(data=_config({"backbone": "torchvision/fasterrcnn_resnet50_fpn"}))


def test_config_known_family_models_load() -> None:
    for name in ("timm/resnet10t", "torchvision/resnet18", f"{HERE}:pooled_cnn"):
        assert load_config(data=_config({"backbone": name})).model.backbone == name


def test_config_does_not_import_torch_for_the_check() -> None:
    import subprocess

    code = "import sys, sweeper.config._sections; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --- the engine --------------------------------------------------------------------------------


def test_engine_trains_a_timm_backbone() -> None:
    from sweeper.engine import Trainer

    config = load_config(
        data=_config(
            {"backbone": "timm/resnet10t"},
            train={"epochs": 1, "batch_size": 128, "warmup_epochs": 0},
            evaluation={"every_n_epochs": 1, "rankme_samples": 256, "oracle": []},
        )
    )
    trainer = Trainer(config, device="cpu")
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=0, in_chans=trainer.data.channels)
    measured = _width(reference, trainer.data.channels, 16)[0]
    assert trainer.method.representation_dim == measured
    results = list(trainer.epochs())
    assert results[-1].status == "ok" and results[-1].evaluated
    final = results[-1].metrics
    assert math.isfinite(final["train/loss"])
    assert 1 <= final["rankme/representation"] <= measured
    assert np.isfinite(final["rankme/embedding"])
