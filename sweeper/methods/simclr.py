"""SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020): the NT-Xent / InfoNCE loss over the 2B views of a batch, with
cosine similarity divided by the temperature τ. The loss is lightly's ``NTXentLoss``; in a
data-parallel trial its ``gather_distributed`` makes every process's views contrast with the
negatives of the global batch (each process's loss is the mean over its own rows, so DDP's
average is the global batch's loss).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.loss import NTXentLoss

from sweeper.hyperparams import SimCLRParams
from sweeper.methods.base import SSLMethod
from sweeper.models import Backbone, build_projector

__all__ = ["SimCLR"]


class SimCLR(SSLMethod):
    """SimCLR; embedding = projector output z (B, K).

    Args:
        temperature: τ of the softmax over cosine similarities (swept in the papers; high τ
            lowers the rank of the embeddings).
    """

    name = "simclr"
    hyperparameters = SimCLRParams

    def __init__(self, backbone: Backbone, *, projector: Sequence[int], temperature: float) -> None:
        super().__init__(backbone, build_projector(backbone.dim, projector), embedding_dim=projector[-1])
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    def training_loss(self, views: Sequence[torch.Tensor], *, progress: float) -> torch.Tensor:
        z_a, z_b = (self.projector(self.backbone(view)) for view in views)
        return self.criterion(z_a, z_b)
