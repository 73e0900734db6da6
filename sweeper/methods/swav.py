"""SwAV (Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", NeurIPS 2020; papers/003 ch. 4).

Embeddings z = ℓ2-normalised projector outputs (B, D) are scored against K ℓ2-normalised
prototypes C (scores zᵀC ∈ [−1, 1]). Codes Q come from the scores of one view by Sinkhorn-Knopp
(equipartition over the batch, entropic regularisation ε, 3 iterations: papers/003 eq. 4.4–4.5),
and the other view predicts them (swapped prediction, eq. 4.1–4.2):

    p_s = softmax(z_sᵀC / τ),
    L   = 1/2 Σ_{t ∈ global views} 1/(V − 1) Σ_{s ≠ t} mean_b [ −Σ_k q_t,k log p_s,k ]

over the V views (2 global, plus local crops with multi-crop; only global views get codes).

The loss and Sinkhorn-Knopp are lightly's ``SwaVLoss``, the prototypes lightly's
``SwaVPrototypes`` (renormalised at the start of every step, as in the SwAV code). Two SwAV
mechanics beyond the loss are here: the prototypes get no update during the first
``freeze_prototypes_epochs`` (:meth:`SwAV.before_optimizer_step`), and for small batches a queue of
past embeddings of each global view joins the Sinkhorn batch once it is full (its codes are
discarded, only the batch's are used).

In a data-parallel trial Sinkhorn-Knopp runs over the global batch (lightly's
``sinkhorn_gather_distributed``: its sums are all-reduced, as SwAV's ``distributed_sinkhorn``),
and each process keeps ``queue_length / workers`` of its own rows in the queue, so the processes'
queues together hold what one process's queue would (exactly so when ``queue_length`` is at
least the global batch). The predictions' cross-entropy is a per-sample mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.models.modules.heads import SwaVPrototypes

from sweeper.distributed import world_size
from sweeper.hyperparams import SwAVParams
from sweeper.methods._multicrop import forward_views
from sweeper.methods.base import SSLMethod
from sweeper.models import Backbone, build_projector

__all__ = ["SwAV"]


class SwAV(SSLMethod):
    """SwAV; embedding = ℓ2-normalised projector output (B, D), the input of the prototypes.

    Args:
        num_prototypes: K.
        temperature: τ of the predicted assignments' softmax.
        epsilon: ε of Sinkhorn-Knopp; large ε gives uniform codes (collapse). In float32 the codes
            overflow below ε ≈ 0.012 (exp(1/ε) with scores ≤ 1), as in the SwAV code.
        sinkhorn_iterations: Sinkhorn-Knopp iterations (3).
        freeze_prototypes_epochs: epochs during which the prototypes are not updated.
        queue_length: embeddings kept per global view for the Sinkhorn batch (0: no queue).
        queue_start: fraction of training after which the queue is filled and used.
        num_local_crops: local views (multi-crop) predicted but never assigned codes.
    """

    name = "swav"
    hyperparameters = SwAVParams

    def __init__(
        self,
        backbone: Backbone,
        *,
        projector: Sequence[int],
        num_prototypes: int,
        temperature: float,
        epsilon: float,
        sinkhorn_iterations: int,
        freeze_prototypes_epochs: int,
        queue_length: int,
        queue_start: float,
        num_local_crops: int,
    ) -> None:
        super().__init__(backbone, build_projector(backbone.dim, projector), embedding_dim=projector[-1])
        self.prototype_layer = SwaVPrototypes(projector[-1], num_prototypes)
        # SwAV's prototypes are a bias-free linear layer (scores are cosine similarities);
        # lightly's SwaVPrototypes adds a bias, which we drop.
        self.prototype_layer.heads[0].bias = None
        self.criterion = SwaVLoss(
            temperature=temperature,
            sinkhorn_iterations=sinkhorn_iterations,
            sinkhorn_epsilon=epsilon,
            sinkhorn_gather_distributed=True,
        )
        self.freeze_prototypes_epochs = freeze_prototypes_epochs
        self.queue_start = queue_start
        self.queue: torch.Tensor
        self.register_buffer("queue", torch.zeros(2, queue_length, projector[-1]))
        self.num_views = 2 + num_local_crops
        self.num_local_views = num_local_crops

    def _embedding(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    def training_loss(self, views: Sequence[torch.Tensor], *, progress: float) -> torch.Tensor:
        self.prototype_layer.normalize()
        embeddings = forward_views(self._embedding, views)
        scores = [self.prototype_layer(z) for z in embeddings]
        queue_scores = self._queue_scores(embeddings[:2], progress=progress)
        loss = self.criterion(scores[:2], scores[2:], queue_scores)
        return loss.reshape(())

    @torch.no_grad()
    def _queue_scores(self, embeddings: Sequence[torch.Tensor], *, progress: float) -> list[torch.Tensor] | None:
        """Scores of the queued embeddings if the queue is on and full; then enqueue the batch.
        Each of W processes uses the first ``queue_length / W`` rows of its buffer."""
        length = self.queue.shape[1] // world_size()
        if length == 0 or progress < self.queue_start:
            return None
        queue = self.queue[:, :length]
        full = bool(queue[:, -1].any())
        scores = [self.prototype_layer(queue[i]) for i in range(2)] if full else None
        for i, z in enumerate(embeddings):
            b = min(len(z), length)
            queue[i, b:] = queue[i, :-b].clone()
            queue[i, :b] = z[:b].detach()
        return scores

    def before_optimizer_step(self, *, progress: float, epoch: int) -> None:
        if epoch < self.freeze_prototypes_epochs:
            for parameter in self.prototype_layer.parameters():
                parameter.grad = None

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        representation = self.backbone(images)
        return representation, F.normalize(self.projector(representation), dim=1)

    def prototypes(self) -> torch.Tensor:
        return F.normalize(self.prototype_layer.heads[0].weight.detach(), dim=1)
