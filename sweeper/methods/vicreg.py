"""VICReg (Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022).

For embeddings z, z' (B, K) of two views:
    λ·MSE(z, z') + μ·[v(z) + v(z')] + ν·[c(z) + c(z')]
with v(z) = mean_k relu(1 − sqrt(Var z_k + ε)) and c(z) = Σ_{i≠j} Cov(z)_ij² / K.
The loss is lightly's ``VICRegLoss``; in a data-parallel trial its ``gather_distributed``
computes the variance and covariance terms over the global batch (the invariance term is a
per-sample mean, which DDP's gradient average already makes global).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.loss import VICRegLoss

from sweeper.hyperparams import VICRegParams
from sweeper.methods.base import SSLMethod
from sweeper.models import Backbone, build_projector

__all__ = ["VICReg"]


class VICReg(SSLMethod):
    """VICReg; embedding = expander output z (B, K).

    Args:
        inv_weight: λ, weight of the invariance (MSE) term.
        var_weight: μ, weight of the variance hinge.
        cov_weight: ν, weight of the covariance penalty; ν → 0 collapses dimensions.
    """

    name = "vicreg"
    hyperparameters = VICRegParams

    def __init__(
        self,
        backbone: Backbone,
        *,
        projector: Sequence[int],
        inv_weight: float,
        var_weight: float,
        cov_weight: float,
    ) -> None:
        super().__init__(backbone, build_projector(backbone.dim, projector), embedding_dim=projector[-1])
        self.criterion = VICRegLoss(
            lambda_param=inv_weight, mu_param=var_weight, nu_param=cov_weight, gather_distributed=True
        )

    def training_loss(self, views: Sequence[torch.Tensor], *, progress: float) -> torch.Tensor:
        z_a, z_b = (self.projector(self.backbone(view)) for view in views)
        return self.criterion(z_a, z_b)
