"""The contract every built-in method keeps with the engine, checked by the same public
``sweeper.testing.check_method`` a plugin's own test calls: a few steps with the engine's call
sequence lower the loss, ``embed`` gives finite (N, dim) tensors without gradients, clustering
methods expose their prototypes, and the state dict round-trips everything the loss depends on.
(The two-process part of the check runs for all nine at once in test_distributed_training.py.)
Method-specific behaviour lives in each method's test file."""

from __future__ import annotations

import pytest
import torch

from sweeper import registry
from sweeper.config import ConfigError
from sweeper.testing import MethodContractError, check_method

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


@pytest.mark.parametrize("name", registry.builtin_names("method"))
def test_every_builtin_keeps_the_contract(name) -> None:
    check_method(name, params=SMALL.get(name), distributed=False, **TRAINING.get(name, {}))


def test_each_builtin_class_declares_the_hyperparameters_the_registry_lists() -> None:
    for name, builtin in registry.BUILTIN_METHODS.items():
        cls = registry.method_class(name)
        assert cls.hyperparameters is builtin.params, name
        assert cls.name == name
        registry.check_signature(cls, builtin.params)  # __init__ takes exactly its fields
        assert registry.method_has_prototypes(name) == builtin.prototypes
        assert (cls.prototypes is not registry.method_class("simclr").prototypes) == builtin.prototypes, name


def test_the_signature_check_names_what_drifted() -> None:
    base = registry.method_class("simclr")

    class ExtraArgument(base):
        def __init__(self, backbone, *, projector, temperature: float, extra: float) -> None:
            super().__init__(backbone, projector=projector, temperature=temperature)

    with pytest.raises(ConfigError, match="extra"):
        registry.check_signature(ExtraArgument, base.hyperparameters)


class _Frozen(registry.method_class("simclr")):
    """A method whose loss cannot fall: its output does not depend on its weights."""

    def training_loss(self, views, *, progress):
        return sum(view.mean() for view in views) * torch.ones((), requires_grad=True)


def test_a_method_whose_loss_cannot_fall_fails_the_check() -> None:
    with pytest.raises(MethodContractError, match="did not lower the loss"):
        check_method(_Frozen, distributed=False)
