"""The contract every registered method keeps with the engine: a few steps with the engine's call
sequence lower the loss, ``embed`` gives finite (N, dim) tensors without gradients, clustering
methods (those with ``num_prototypes``) expose their prototypes, and the state dict round-trips
everything the loss depends on. Method-specific behaviour lives in each method's test file."""

from __future__ import annotations

import pytest
import torch

from sweeper.hyperparams import METHOD_PARAMS
from sweeper.methods import METHODS, SSLMethod
from sweeper.models import build_backbone

PROJECTOR = [64, 32]
REPRESENTATION_DIM = 128  # small_cnn
# Smaller than the papers' defaults, for a CPU test.
SMALL = {
    "byol": {"base_momentum": 0.99, "predictor_hidden_dim": 64},
    "dino": {"num_prototypes": 24, "base_momentum": 0.9},
    "swav": {"num_prototypes": 12},
    "carp": {"num_prototypes": 64, "block_size": 16, "base_momentum": 0.9},
}
# How each method is trained for the "lowers the loss" check (defaults: 5 AdamW steps at 1e-3).
TRAINING = {
    "dino": {"epoch": 1},  # past freeze_last_layer_epochs, so that the prototypes train too
    "swav": {"steps": 8},
    "carp": {"steps": 10, "lr": 3e-3},
}


def _build(name: str, *, seed: int = 0) -> SSLMethod:
    torch.manual_seed(seed)
    backbone = build_backbone("small_cnn", in_channels=1, image_size=16)
    params = METHOD_PARAMS[name](**SMALL.get(name, {})).model_dump()
    return METHODS[name](backbone, projector=PROJECTOR, **params)


def _clustering(name: str) -> bool:
    return "num_prototypes" in METHOD_PARAMS[name].model_fields


@pytest.mark.parametrize("name", list(METHODS))
def test_a_few_steps_lower_the_loss(name, make_views, loss_before_after) -> None:
    method = _build(name)
    before, after = loss_before_after(method, make_views(method.num_views), **TRAINING.get(name, {}))
    assert after < before, (before, after)


@pytest.mark.parametrize("name", list(METHODS))
def test_embed_gives_finite_representations_and_embeddings(name, digits_batch) -> None:
    method = _build(name)
    assert method.name == name
    assert (method.representation_dim, method.embedding_dim) == (REPRESENTATION_DIM, PROJECTOR[-1])
    method.eval()
    representation, embedding = method.embed(digits_batch)
    assert representation.shape == (len(digits_batch), REPRESENTATION_DIM)
    assert embedding.shape == (len(digits_batch), PROJECTOR[-1])
    for tensor in (representation, embedding):
        assert torch.isfinite(tensor).all() and not tensor.requires_grad
    assert embedding.std(dim=0).max() > 0  # not a constant output
    prototypes = method.prototypes()
    if _clustering(name):
        assert prototypes.shape == (SMALL[name]["num_prototypes"], PROJECTOR[-1])
        assert torch.isfinite(prototypes).all()
    else:
        assert prototypes is None


@pytest.mark.parametrize("name", list(METHODS))
def test_state_dict_round_trip(name, make_views, loss_before_after, digits_batch) -> None:
    trained = _build(name)
    views = make_views(trained.num_views)
    loss_before_after(trained, views, steps=2)  # moves weights, EMA teachers, centres, queues
    restored = _build(name, seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), restored.parameters(), strict=True))
    restored.load_state_dict(trained.state_dict())

    for key, value in trained.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    losses = []
    for method in (trained, restored):
        method.train()
        torch.manual_seed(3)
        with torch.no_grad():
            losses.append(float(method.training_loss(views, progress=0.5)))
    assert losses[0] == losses[1]
    for method in (trained, restored):
        method.eval()
    for a, b in zip(trained.embed(digits_batch), restored.embed(digits_batch), strict=True):
        assert torch.equal(a, b)


def test_the_registry_refuses_to_drift_from_the_hyperparameters() -> None:
    from sweeper.methods import _registry

    classes = list(METHODS.values())
    assert list(_registry(*reversed(classes))) == list(METHOD_PARAMS)  # in METHOD_PARAMS' order
    with pytest.raises(ImportError, match="do not match"):
        _registry(*classes[1:])

    base = METHODS["simclr"]

    class ExtraArgument(base):
        def __init__(self, backbone, *, projector, temperature: float, extra: float) -> None:
            super().__init__(backbone, projector=projector, temperature=temperature)

    with pytest.raises(ImportError, match="extra"):
        _registry(ExtraArgument, *classes[1:])
