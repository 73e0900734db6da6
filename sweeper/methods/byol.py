"""BYOL (Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020).

An online network (backbone f_θ, projector g_θ, predictor q_θ) predicts the projection of the
other view by a target network (f_ξ, g_ξ), an EMA of the online one. For views v, v' (§3.1):

    L = ‖q̄_θ(z_θ) − z̄'_ξ‖² + ‖q̄_θ(z'_θ) − z̄_ξ‖²,   ‖ā − b̄‖² = 2 − 2·cos(a, b)

averaged over the batch, with a stop-gradient on the target. After each step
ξ ← τ·ξ + (1 − τ)·θ, τ = 1 − (1 − τ_base)(cos(πk/K) + 1)/2 (§3.2). The cosine similarity is
lightly's ``NegativeCosineSimilarity``, the heads lightly's ``BYOLPredictionHead`` and our
``model.projector`` MLP (the paper: 4096 hidden, 256 out, for both projector and predictor).
``use_predictor=False`` is the paper's collapsing ablation (no predictor: Table 5b).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import BYOLPredictionHead
from torch import nn

from sweeper.hyperparams import BYOLParams
from sweeper.methods._teacher import cosine_momentum, frozen_copy, update_momentum
from sweeper.methods.base import SSLMethod
from sweeper.models import Backbone, build_projector

__all__ = ["BYOL", "byol_loss"]

_negative_cosine = NegativeCosineSimilarity()


def byol_loss(predictions: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Symmetrised BYOL loss (Grill et al. 2020, eq. 2 and L + L̃).

    Args:
        predictions: online predictions (p_1, p_2) of the two views, each (B, K).
        targets: target projections (z'_1, z'_2) of the same views, each (B, K), detached.

    Returns:
        mean_b [2 − 2 cos(p_1, z'_2)] + mean_b [2 − 2 cos(p_2, z'_1)], a scalar in [0, 8].
    """
    p_1, p_2 = predictions
    t_1, t_2 = targets
    return 4.0 + 2.0 * (_negative_cosine(p_1, t_2) + _negative_cosine(p_2, t_1))


class BYOL(SSLMethod):
    """BYOL; embedding = online projector output z (B, K), the network evaluated in the paper.

    Args:
        base_momentum: τ_base of the target EMA; τ_base = 0 collapses in the paper, 1 freezes a
            random target.
        predictor_hidden_dim: hidden width of the predictor MLP (the paper: 4096).
        use_predictor: False replaces the predictor by the identity (the collapsing ablation).
    """

    name = "byol"
    hyperparameters = BYOLParams

    def __init__(
        self,
        backbone: Backbone,
        *,
        projector: Sequence[int],
        base_momentum: float,
        predictor_hidden_dim: int,
        use_predictor: bool,
    ) -> None:
        super().__init__(backbone, build_projector(backbone.dim, projector), embedding_dim=projector[-1])
        self.predictor: nn.Module = nn.Identity()
        if use_predictor:
            self.predictor = BYOLPredictionHead(projector[-1], predictor_hidden_dim, projector[-1])
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projector = frozen_copy(self.projector)
        self.base_momentum = base_momentum

    def training_loss(self, views: Sequence[torch.Tensor], *, progress: float) -> torch.Tensor:
        predictions = [self.predictor(self.projector(self.backbone(view))) for view in views]
        with torch.no_grad():
            targets = [self.target_projector(self.target_backbone(view)) for view in views]
        return byol_loss(predictions, targets)

    def after_step(self, *, progress: float) -> None:
        momentum = cosine_momentum(progress, self.base_momentum)
        update_momentum(self.backbone, self.target_backbone, momentum)
        update_momentum(self.projector, self.target_projector, momentum)
