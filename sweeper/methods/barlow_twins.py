"""Barlow Twins (Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via
Redundancy Reduction", ICML 2021).

For embeddings Z, Z' (N, d) of two views, each standardised per dimension over the batch:

    C   = Ẑᵀ Ẑ' / N                                   (d × d cross-correlation)
    L   = Σ_i (1 − C_ii)² + λ Σ_i Σ_{j≠i} C_ij²

The loss is lightly's ``BarlowTwinsLoss`` (the paper's Algorithm 1). The projector is
``model.projector`` as Linear-BN-ReLU hidden layers and a linear output (the paper: 8192-8192-8192).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.loss import BarlowTwinsLoss

from sweeper.methods.base import SSLMethod
from sweeper.models import Backbone, build_projector

__all__ = ["BarlowTwins"]


class BarlowTwins(SSLMethod):
    """Barlow Twins; embedding = projector output z (B, K).

    Args:
        lambda_offdiag: λ, weight of the off-diagonal (redundancy-reduction) terms; λ = 0 leaves
            only the per-dimension invariance and lets the dimensions collapse onto each other.
    """

    name = "barlow_twins"

    def __init__(self, backbone: Backbone, *, projector: Sequence[int], lambda_offdiag: float) -> None:
        super().__init__(backbone, build_projector(backbone.dim, projector), embedding_dim=projector[-1])
        self.criterion = BarlowTwinsLoss(lambda_param=lambda_offdiag)

    def training_loss(self, views: Sequence[torch.Tensor], *, progress: float) -> torch.Tensor:
        z_a, z_b = (self.projector(self.backbone(view)) for view in views)
        return self.criterion(z_a, z_b)
