"""Every method: the config accepts its hyperparameters and rejects unknown ones, and the
registry builds it from a config with the engine's contract (views, hooks, embed shapes)."""

from __future__ import annotations

import pytest
import torch

from sweeper.config import ConfigError, SweeperConfig, load_config
from sweeper.methods import build_method
from sweeper.registry import BUILTIN_METHODS

# Non-default values for every field, small enough for a CPU test.
PARAMS = {
    "simclr": {"temperature": 0.2},
    "vicreg": {"inv_weight": 10.0, "var_weight": 15.0, "cov_weight": 0.5},
    "vicreg_exp": {"inv_weight": 10.0, "var_weight": 15.0, "cov_weight": 0.5, "temperature": 0.2},
    "vicreg_ctr": {"inv_weight": 10.0, "var_weight": 15.0, "cov_weight": 0.5, "temperature": 0.2},
    "barlow_twins": {"lambda_offdiag": 0.01},
    "byol": {"base_momentum": 0.99, "predictor_hidden_dim": 32, "use_predictor": False},
    "dino": {
        "num_prototypes": 64,
        "teacher_temp": 0.06,
        "warmup_teacher_temp": 0.03,
        "teacher_temp_warmup": 0.2,
        "student_temp": 0.2,
        "center_momentum": 0.8,
        "base_momentum": 0.99,
        "freeze_last_layer_epochs": 2,
        "head_batch_norm": True,
        "num_local_crops": 1,
    },
    "swav": {
        "num_prototypes": 32,
        "temperature": 0.2,
        "epsilon": 0.1,
        "sinkhorn_iterations": 2,
        "freeze_prototypes_epochs": 2,
        "queue_length": 64,
        "queue_start": 0.0,
        "num_local_crops": 1,
    },
    "carp": {"num_prototypes": 64, "block_size": 16, "base_momentum": 0.95, "entropy_weight": 0.5},
}


def _config(method: str, params: dict) -> SweeperConfig:
    return load_config(
        data={
            "name": f"test-{method}".replace("_", "-"),
            "data": {"image_size": 8},
            "method": {"name": method, "params": params},
            "model": {"projector": [32, 16]},
            "selection": {"rule": "max"},
        }
    )


def test_every_method_is_registered_with_its_params() -> None:
    assert set(BUILTIN_METHODS) == set(PARAMS)
    for name, fields in PARAMS.items():
        assert set(fields) == set(BUILTIN_METHODS[name].params.model_fields), name


@pytest.mark.parametrize("method", sorted(PARAMS))
def test_config_accepts_the_params_and_rejects_an_unknown_one(method) -> None:
    config = _config(method, PARAMS[method])
    assert config.method.params == PARAMS[method]
    assert _config(method, {}).method.params == BUILTIN_METHODS[method].params().model_dump()  # defaults
    with pytest.raises(ConfigError, match="no_such_param"):
        _config(method, {**PARAMS[method], "no_such_param": 1.0})


def test_config_rejects_invalid_values() -> None:
    with pytest.raises(ConfigError, match="block_size"):
        _config("carp", {"num_prototypes": 16, "block_size": 32})
    with pytest.raises(ConfigError, match="base_momentum"):
        _config("byol", {"base_momentum": 1.5})
    with pytest.raises(ConfigError, match="epsilon"):
        _config("swav", {"epsilon": 0.0})


@pytest.mark.parametrize("method", sorted(PARAMS))
def test_built_from_config_follows_the_engine_contract(method) -> None:
    torch.manual_seed(0)
    model = build_method(_config(method, PARAMS[method]), in_channels=1)
    assert model.name == method
    views = [torch.rand(8, 1, 8, 8) for _ in range(model.num_views)]
    loss = model.training_loss(views, progress=0.0)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    model.before_optimizer_step(progress=0.0, epoch=0)
    model.after_step(progress=0.0)
    model.eval()
    representation, embedding = model.embed(torch.rand(3, 1, 8, 8))
    assert representation.shape == (3, model.representation_dim)
    assert embedding.shape == (3, model.embedding_dim)
    prototypes = model.prototypes()
    if method in {"dino", "swav", "carp"}:
        assert prototypes is not None
        assert prototypes.shape == (PARAMS[method]["num_prototypes"], model.embedding_dim)
    else:
        assert prototypes is None
