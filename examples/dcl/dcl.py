"""DCL (Yeh et al., "Decoupled Contrastive Learning", ECCV 2022): SimCLR's InfoNCE with the
positive pair taken out of the denominator, for projector outputs z_a, z_b (B, K) of two views.
The loss is lightly's ``DCLLoss``; ``gather_distributed=True`` contrasts every view with the
negatives of the global batch in a data-parallel trial. The shortest complete method plugin."""

from collections.abc import Sequence

import torch
from lightly.loss import DCLLoss
from pydantic import Field

import sweeper
from sweeper.models import Backbone, build_projector


class DCLParams(sweeper.MethodParams):
    temperature: float = Field(0.1, gt=0)  # τ; the paper's and lightly's default


@sweeper.register_method("dcl")
class DCL(sweeper.SSLMethod):
    hyperparameters = DCLParams

    def __init__(self, backbone: Backbone, *, projector: Sequence[int], temperature: float) -> None:
        super().__init__(backbone, build_projector(backbone.dim, projector), embedding_dim=projector[-1])
        self.criterion = DCLLoss(temperature=temperature, gather_distributed=True)

    def training_loss(self, views: Sequence[torch.Tensor], *, progress: float) -> torch.Tensor:
        z_a, z_b = (self.projector(self.backbone(view)) for view in views)
        return self.criterion(z_a, z_b)
