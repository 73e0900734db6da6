"""SimSiam keeps sweeper's method contract (two processes training as one included), and its
loss is the paper's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sweeper_simsiam import SimSiam, SimSiamParams, simsiam_loss
from torch import nn

from sweeper.models import Backbone
from sweeper.testing import check_method

PARAMS = {"predictor_hidden_dim": 8}
PROJECTOR = (32, 32, 16)  # the paper's three projector layers, CPU-sized


def test_simsiam_keeps_the_method_contract() -> None:
    check_method(SimSiam, params=PARAMS, projector=PROJECTOR)  # two processes included


def test_the_default_predictor_is_a_quarter_bottleneck() -> None:
    backbone = Backbone(nn.Flatten(), 64)
    predictor = SimSiam(backbone, projector=[32, 16], **SimSiamParams().model_dump()).predictor
    assert [layer.out_features for layer in predictor.modules() if isinstance(layer, nn.Linear)] == [4, 16]


def test_the_loss_is_the_symmetrised_negative_cosine_with_stop_gradient() -> None:
    torch.manual_seed(0)
    p_1, p_2, z_1, z_2 = (torch.randn(6, 5, requires_grad=True) for _ in range(4))
    loss = simsiam_loss((p_1, p_2), (z_1, z_2))
    expected = -0.5 * (F.cosine_similarity(p_1, z_2).mean() + F.cosine_similarity(p_2, z_1).mean())
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert z_1.grad is None and z_2.grad is None  # the stop-gradient
    assert p_1.grad is not None and p_2.grad is not None
    assert float(simsiam_loss((z_2, z_1), (z_1, z_2)).detach()) == pytest.approx(-1.0, abs=1e-6)
