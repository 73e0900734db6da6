"""Multi-crop views: local views at their own size from their own area range, the engine's wiring
for DINO/SwAV, and backbones that take the smaller local views."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer

from sweeper.config import DataConfig, load_config
from sweeper.data import DatasetSplits, LabelledImages, MultiViewAugment, load_dataset
from sweeper.engine import Trainer
from sweeper.models import build_backbone

SIDE = 48


def _coordinate_images(batch: int) -> torch.Tensor:
    """RGB images whose red channel is the x and green channel the y coordinate in (0, 1)."""
    ramp = (torch.arange(SIDE, dtype=torch.float32) + 0.5) / SIDE
    x = ramp.view(1, SIDE).expand(SIDE, SIDE)
    image = torch.stack([x, x.t(), torch.zeros(SIDE, SIDE)])
    return image.expand(batch, 3, SIDE, SIDE).contiguous()


def _crop_areas(view: torch.Tensor) -> torch.Tensor:
    """Area fraction of the source each view pixel grid spans, read off the coordinate channels.

    An S-pixel view of a crop of relative width w samples x over w·(S − 1)/S of the image.
    """
    side = view.shape[-1]
    spans = [view[:, c].amax(dim=(1, 2)) - view[:, c].amin(dim=(1, 2)) for c in (0, 1)]
    return spans[0] * spans[1] * (side / (side - 1)) ** 2


def test_local_views_have_their_size_and_come_from_their_scale_range() -> None:
    torch.manual_seed(0)
    augment = MultiViewAugment(
        num_views=2,
        num_local_views=3,
        local_size=24,
        local_crop_scale=(0.05, 0.4),
        crop_scale=(0.4, 1.0),
        flip=False,
        jitter_p=0.0,
        grayscale_p=0.0,
        blur_p=0.0,
        noise_p=0.0,
    )
    images = _coordinate_images(256)
    views = augment(images)
    assert [tuple(v.shape) for v in views] == [(256, 3, SIDE, SIDE)] * 2 + [(256, 3, 24, 24)] * 3
    local = _crop_areas(augment.view(images, local=True))
    glob = _crop_areas(augment.view(images))
    tolerance = 0.02  # the ramp is flat within half a pixel of the border
    assert float(local.min()) > 0.05 - tolerance and float(local.max()) < 0.4 + tolerance
    assert float(glob.min()) > 0.4 - tolerance and float(glob.max()) <= 1.0 + tolerance
    # the draws cover the range, not one corner of it
    assert float(local.min()) < 0.08 and float(local.max()) > 0.35
    assert float(glob.min()) < 0.45 and float(glob.max()) > 0.9


def test_local_views_need_a_size() -> None:
    with pytest.raises(ValueError, match="local_size"):
        MultiViewAugment(num_local_views=2)


def _multicrop_config(method: str, **data: object):
    params = {
        "dino": {"num_prototypes": 64, "head_batch_norm": True, "num_local_crops": 2},
        "swav": {"num_prototypes": 16, "num_local_crops": 2},
    }[method]
    return load_config(
        data={
            "name": "multicrop",
            "data": {"image_size": 8, **data},
            "method": {"name": method, "params": params},
            "model": {"projector": [32, 16]},
            "train": {"epochs": 1, "batch_size": 128, "warmup_epochs": 0},
            "evaluation": {"every_n_epochs": 1, "rankme_samples": 300, "oracle": []},
            "selection": {"rule": "max"},
        }
    )


@pytest.fixture(scope="module")
def digits8() -> DatasetSplits:
    """512 training digits at 8×8 (local views at 4×4), for fast epochs."""
    splits = load_dataset(DataConfig(image_size=8))
    train = LabelledImages(splits.train.images[:512], splits.train.labels[:512])
    return replace(splits, train=train)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method", ["dino", "swav"])
def test_engine_makes_global_and_local_views_and_trains(method, digits8) -> None:
    trainer = Trainer(_multicrop_config(method), data=digits8, device="cpu")
    augment = trainer.augment
    # defaults: local side max(4, 8 · 96/224), local area (0.05, 0.4), global crops (0.4, 1)
    assert (augment.num_views, augment.num_local_views, augment.local_size) == (2, 2, 4)
    assert augment.local_crop_scale == (0.05, 0.4) and augment.crop_scale == (0.4, 1.0)
    seen: list[list[tuple[int, ...]]] = []
    loss = trainer.method.training_loss
    trainer.method.training_loss = lambda views, **kw: (
        seen.append([tuple(v.shape[1:]) for v in views]) or loss(views, **kw)
    )
    (result,) = list(trainer.epochs())
    assert result.status == "ok" and 1.0 <= result.metrics["rankme/embedding"] <= 16.0
    assert seen and all(shapes == [(1, 8, 8)] * 2 + [(1, 4, 4)] * 2 for shapes in seen)


def test_multicrop_config_keys_reach_the_augmentation(digits8) -> None:
    config = _multicrop_config("swav", local_crop_size=6, local_crop_scale=[0.05, 0.14], crop_scale=[0.14, 1.0])
    augment = Trainer(config, data=digits8, device="cpu").augment
    assert augment.local_size == 6
    assert augment.local_crop_scale == (0.05, 0.14) and augment.crop_scale == (0.14, 1.0)
    # without local crops nothing changes: two global views of the default scale
    plain = Trainer(config.with_overrides({"method.params.num_local_crops": 0}), data=digits8, device="cpu")
    assert (plain.augment.num_views, plain.augment.num_local_views) == (2, 0)
    assert plain.augment.crop_scale == (0.14, 1.0)


@pytest.mark.parametrize(("name", "local"), [("small_cnn", 7), ("resnet18", 7), ("vit_s16", 8)])
def test_backbones_take_the_smaller_local_views(name, local) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(name, in_channels=3, image_size=16)
    backbone.module.eval()
    with torch.no_grad():
        for side in (16, local):
            assert backbone.module(torch.rand(2, 3, side, side)).shape == (2, backbone.dim)


def test_vit_is_torchvisions_at_its_size_and_interpolates_positions_for_local_views() -> None:
    torch.manual_seed(0)
    net = build_backbone("vit_s16", in_channels=3, image_size=32).module.eval()  # patch 4: 8×8 grid
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), VisionTransformer.forward(net, x))
        # a 16² view (4×4 grid) uses the 8×8 grid's position embeddings resized, not a crop of them
        local = torch.rand(2, 3, 16, 16)
        grid = net.encoder.pos_embedding[:, 1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
        resized = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
        positions = net._position_embedding(4, 4)
        assert positions.shape == (1, 17, 384)
        assert torch.equal(positions[:, 1:], resized.flatten(2).transpose(1, 2))
        assert torch.isfinite(net(local)).all()
