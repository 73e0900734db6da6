"""Momentum (EMA) teachers shared by BYOL, DINO and CARP.

The teacher's weights follow ξ ← m·ξ + (1 − m)·θ after every optimiser step (lightly's
``update_momentum``), with m increased from a base value to 1 by a cosine schedule over
training (BYOL §3.2; DINO and CARP use the same schedule).
"""

from __future__ import annotations

import copy

from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

__all__ = ["cosine_momentum", "frozen_copy", "update_momentum"]


def cosine_momentum(progress: float, base: float) -> float:
    """EMA momentum at ``progress`` ∈ [0, 1]: m = 1 − (1 − base)·(cos(π·progress) + 1) / 2.

    lightly's ``cosine_schedule`` evaluates ``end − (end − start)·(cos(π·step/(max_steps − 1)) + 1)/2``;
    with ``max_steps = 2`` its ``step`` is exactly the fraction of training done.
    """
    return cosine_schedule(step=progress, max_steps=2, start_value=base, end_value=1.0)  # type: ignore[arg-type]


def frozen_copy(module: nn.Module, twin: nn.Module | None = None) -> nn.Module:
    """A teacher: a copy of ``module`` with the same weights and no gradients.

    Modules with ``torch.nn.utils.weight_norm`` (DINO/CARP heads) cannot be deep-copied; pass a
    freshly built ``twin`` of the same architecture and it receives ``module``'s weights.
    """
    teacher = copy.deepcopy(module) if twin is None else twin
    if twin is not None:
        teacher.load_state_dict(module.state_dict())
    deactivate_requires_grad(teacher)
    return teacher
