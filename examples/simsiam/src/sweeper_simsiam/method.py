"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021).

Two views x_1, x_2 of each image go through one encoder f (backbone, then projector) and a
predictor MLP h: z_i = f(x_i) (B, K), p_i = h(z_i) (B, K). The loss (eqs. 1–3) is

    L = ½·D(p_1, sg(z_2)) + ½·D(p_2, sg(z_1)),   D(p, z) = −mean_b cos(p_b, z_b),

with sg the stop-gradient. No negatives, no momentum encoder: the paper shows that the
stop-gradient (with the predictor) is what prevents collapse; without it the loss reaches −1 at
once and the outputs collapse to a constant (§4.1, Fig. 2).

Heads as in the paper (§3): the projector has BatchNorm on every layer, its output included, and
no ReLU on the output; the predictor is a bottleneck, Linear-BN-ReLU then Linear (2048 → 512 →
2048 in the paper). The cosine is lightly's ``NegativeCosineSimilarity``, the predictor lightly's
``SimSiamPredictionHead``. The projector is sweeper's ``build_projector`` with its output
BatchNorm: with ``model.projector: [h, h, K]`` it is lightly's ``SimSiamProjectionHead`` layer
for layer (affine-free output BatchNorm, as in the authors' code), and, as for every built-in,
``model.projector`` decides its depth and widths, so a config can sweep them; lightly's head
fixes three layers of one hidden width. The loss is a per-sample mean with no batch statistic
besides BatchNorm's, which a data-parallel trial synchronises: it needs nothing gathered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import SimSiamPredictionHead
from pydantic import Field

from sweeper import MethodParams, SSLMethod
from sweeper.models import Backbone, build_projector

__all__ = ["SimSiam", "SimSiamParams", "simsiam_loss"]

# The paper's predictor: 2048 -> 512 -> 2048, a hidden layer of a quarter of the embedding.
PREDICTOR_RATIO = 4

_negative_cosine = NegativeCosineSimilarity()


def simsiam_loss(predictions: Sequence[torch.Tensor], projections: Sequence[torch.Tensor]) -> torch.Tensor:
    """Symmetrised negative cosine similarity with stop-gradient (Chen & He 2021, eqs. 1–3).

    Args:
        predictions: (p_1, p_2), the predictor outputs h(z_1), h(z_2) of the two views, each (B, K).
        projections: (z_1, z_2), the projector outputs of the same views, each (B, K); their
            gradient is stopped here.

    Returns:
        ½·D(p_1, sg(z_2)) + ½·D(p_2, sg(z_1)), D(p, z) = −mean_b cos(p_b, z_b): a scalar in
        [−1, 1], −1 when every prediction points along the other view's projection.
    """
    p_1, p_2 = predictions
    z_1, z_2 = projections
    return 0.5 * (_negative_cosine(p_1, z_2.detach()) + _negative_cosine(p_2, z_1.detach()))


class SimSiamParams(MethodParams):
    """SimSiam's hyperparameters: the hidden width of the predictor MLP h.

    The paper's h is a bottleneck whose hidden layer is a quarter of the embedding (512 for
    K = 2048, §3). ``None`` keeps that ratio for any ``model.projector``: K // 4 hidden units
    for an embedding of K dimensions.
    """

    predictor_hidden_dim: Annotated[int, Field(gt=0)] | None = None


class SimSiam(SSLMethod):
    """SimSiam; embedding = projector output z (B, K), representation = backbone output (B, D)
    (the base class's ``embed``).

    Args:
        backbone: The encoder's backbone, giving (B, D).
        projector: ``model.projector``, the projector's sizes (hidden..., K); the paper's is
            [2048, 2048, 2048].
        predictor_hidden_dim: Hidden width of the predictor MLP; None: K // 4.
    """

    hyperparameters = SimSiamParams

    def __init__(self, backbone: Backbone, *, projector: Sequence[int], predictor_hidden_dim: int | None) -> None:
        embedding_dim = projector[-1]
        super().__init__(
            backbone, build_projector(backbone.dim, projector, last_batch_norm=True), embedding_dim=embedding_dim
        )
        if predictor_hidden_dim is None:
            predictor_hidden_dim = max(1, embedding_dim // PREDICTOR_RATIO)
        self.predictor = SimSiamPredictionHead(embedding_dim, predictor_hidden_dim, embedding_dim)

    def training_loss(self, views: Sequence[torch.Tensor], *, progress: float) -> torch.Tensor:
        z_1, z_2 = (self.projector(self.backbone(view)) for view in views)
        return simsiam_loss((self.predictor(z_1), self.predictor(z_2)), (z_1, z_2))
