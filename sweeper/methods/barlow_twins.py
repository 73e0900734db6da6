"""Barlow Twins (Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via
Redundancy Reduction", ICML 2021).

For embeddings Z, Z' (N, d) of two views, each standardised per dimension over the batch:

    C   = Ẑᵀ Ẑ' / N                                   (d × d cross-correlation)
    L   = Σ_i (1 − C_ii)² + λ Σ_i Σ_{j≠i} C_ij²

The loss is lightly's ``BarlowTwinsLoss`` (the paper's Algorithm 1). The projector is
``model.projector`` as Linear-BN-ReLU hidden layers and a linear output (the paper: 8192-8192-8192).

In a data-parallel trial both the standardisation and C are statistics of the global batch (as
the paper's code, whose standardising BatchNorm is a SyncBatchNorm). lightly's
``gather_distributed`` all-reduces C but standardises each process's rows with its own
statistics, which is not the global-batch loss; so the embeddings of all processes are gathered
(differentiably, :func:`sweeper.distributed.gather_cat`) and the loss is lightly's on the whole
global batch: every process computes the same loss, B·d instead of d² numbers travel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.loss import BarlowTwinsLoss

from sweeper.distributed import gather_cat
from sweeper.hyperparams import BarlowTwinsParams
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
    hyperparameters = BarlowTwinsParams

    def __init__(self, backbone: Backbone, *, projector: Sequence[int], lambda_offdiag: float) -> None:
        super().__init__(backbone, build_projector(backbone.dim, projector), embedding_dim=projector[-1])
        self.criterion = BarlowTwinsLoss(lambda_param=lambda_offdiag)

    def training_loss(self, views: Sequence[torch.Tensor], *, progress: float) -> torch.Tensor:
        z_a, z_b = (gather_cat(self.projector(self.backbone(view))) for view in views)
        return self.criterion(z_a, z_b)
