"""CARP (Silva & Ramírez Rivera, "Representation Learning via Consistent Assignment of Views over
Random Partitions", NeurIPS 2023; papers/002).

A student and an EMA teacher (momentum 0.99 → 1, cosine) map each view to logits over K learnable
prototypes (an MLP to a bottleneck and a weight-normalised linear "assigner", the paper's App. C.1
and the authors' ``CARPHead``). Every step the K prototypes are randomly partitioned into
N_P = ⌊K / N_B⌋ blocks of N_B; within block j a view's assignment is the softmax of its logits
restricted to the block: s^v_{i,j} (student), t^v_{i,j} (teacher), each (N_B,). The loss
(papers/002 eq. 4 and App. E) is

    L = 1/(N·N_P) Σ_i Σ_j [ L_c(s¹_{i,j}, t²_{i,j}) + L_c(s²_{i,j}, t¹_{i,j}) ]
        + 1/N_P Σ_j [ log N_B − H(p̄_j) ],        L_c(a, b) = −log ⟨a, b⟩

with p̄_j the mean block-j assignment over the batch's student and teacher distributions of
both views: the consistency term both ways plus the KL of each block's mean assignment from
uniform. N_B = K (a single block) is the collapsing CARL-like setting (Table B.2).

The head is DINO's without the ℓ2 normalisation before the last layer
(:func:`sweeper.models.build_prototype_head` with ``l2_bottleneck=False``; BatchNorm and GELU in
the MLP, as the authors' ``CARPHead``) and lightly's ``update_momentum``; the partition and the
loss are ours (lightly has no CARP). Like the authors' code we clamp ⟨a, b⟩ from below at the
float epsilon before the log. The paper's formula sums the two directions; the authors' code
averages them (a factor ½ on the consistency term) — we follow the paper.

In a data-parallel trial the partition is rank 0's (broadcast) and p̄_j the mean over the global
batch (differentiable all-reduces, :func:`sweeper.distributed.global_mean`); the consistency
term is a per-sample mean, global through DDP's gradient average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from lightly.models.modules.heads import DINOProjectionHead

from sweeper.distributed import broadcast_, global_mean
from sweeper.hyperparams import CARPParams
from sweeper.methods._multicrop import forward_views
from sweeper.methods._teacher import cosine_momentum, frozen_copy, update_momentum
from sweeper.methods.base import SSLMethod
from sweeper.models import Backbone, build_prototype_head, prototype_weights

__all__ = ["CARP", "block_assignments", "carp_loss", "random_partition"]


def random_partition(num_prototypes: int, block_size: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Prototype indices (N_P, N_B) of a uniformly random partition of range(K) into
    N_P = K // N_B blocks of N_B (when N_B does not divide K, the K mod N_B left-over prototypes
    sit out this step, as in the authors' code); rank 0's in a data-parallel trial."""
    blocks = num_prototypes // block_size
    order = broadcast_(torch.randperm(num_prototypes, device=device))[: blocks * block_size]
    return order.view(blocks, block_size)


def block_assignments(logits: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Per-block assignment distributions (N_P, B, N_B): softmax of ``logits`` (B, K) over the
    prototypes of each block of ``blocks`` (N_P, N_B)."""
    return logits[:, blocks].softmax(dim=-1).transpose(0, 1)


def carp_loss(
    student_logits: Sequence[torch.Tensor],
    teacher_logits: Sequence[torch.Tensor],
    blocks: torch.Tensor,
    *,
    entropy_weight: float = 1.0,
) -> torch.Tensor:
    """CARP's random-partition loss (papers/002 eq. 4 / App. E).

    Args:
        student_logits: the student's prototype logits of each view, each (B, K).
        teacher_logits: the teacher's logits of the same views, each (B, K) (no gradient).
        blocks: the partition, prototype indices (N_P, N_B).
        entropy_weight: λ_e of eq. 3 (1 in eq. 4; 0 leaves the consistency term alone, which
            "collapses to a state where all views are assigned to the same prototype", §3).

    Returns:
        Σ_{v ≠ w} mean_{i,j} −log ⟨s^v_{i,j}, t^w_{i,j}⟩ + λ_e·mean_j [log N_B − H(p̄_j)], a scalar.
    """
    s = [block_assignments(logits, blocks) for logits in student_logits]
    t = [block_assignments(logits, blocks) for logits in teacher_logits]
    eps = torch.finfo(s[0].dtype).eps
    consistency = s[0].new_zeros(())
    for v, s_v in enumerate(s):
        for w, t_w in enumerate(t):
            if v != w:
                agreement = (s_v * t_w).sum(dim=-1)  # (N_P, B)
                consistency = consistency - agreement.clamp(min=eps).log().mean()
    mean_assignment = global_mean(torch.cat([*s, *t], dim=1), dim=1)  # (N_P, N_B), global batch
    entropy = -torch.special.xlogy(mean_assignment, mean_assignment).sum(dim=-1)
    return consistency + entropy_weight * (math.log(blocks.shape[1]) - entropy).mean()


class CARP(SSLMethod):
    """CARP; embedding = the student's bottleneck (B, D), the input of the prototype layer (CARP
    has no ℓ2 normalisation there); :meth:`prototypes` is the student's prototype layer.

    Args:
        num_prototypes: K.
        block_size: N_B, prototypes per random block (N_B = K collapses).
        base_momentum: base EMA momentum of the teacher (cosine-increased to 1).
        entropy_weight: λ_e, the weight of the uniform-assignment term (0 collapses).
    """

    name = "carp"
    hyperparameters = CARPParams

    def __init__(
        self,
        backbone: Backbone,
        *,
        projector: Sequence[int],
        num_prototypes: int,
        block_size: int,
        base_momentum: float,
        entropy_weight: float,
    ) -> None:
        if not 0 < block_size <= num_prototypes:
            raise ValueError(f"block_size must be in [1, num_prototypes={num_prototypes}], got {block_size}")

        def head() -> DINOProjectionHead:
            return build_prototype_head(backbone.dim, projector, num_prototypes, batch_norm=True, l2_bottleneck=False)

        super().__init__(backbone, head(), embedding_dim=projector[-1])
        self.teacher_backbone = frozen_copy(self.backbone)
        self.teacher_head = frozen_copy(self.projector, twin=head())
        self.num_prototypes = num_prototypes
        self.block_size = block_size
        self.base_momentum = base_momentum
        self.entropy_weight = entropy_weight

    def training_loss(self, views: Sequence[torch.Tensor], *, progress: float) -> torch.Tensor:
        student = forward_views(lambda x: self.projector(self.backbone(x)), views)
        with torch.no_grad():
            teacher = forward_views(lambda x: self.teacher_head(self.teacher_backbone(x)), views)
        blocks = random_partition(self.num_prototypes, self.block_size, device=views[0].device)
        return carp_loss(student, teacher, blocks, entropy_weight=self.entropy_weight)

    def after_step(self, *, progress: float) -> None:
        momentum = cosine_momentum(progress, self.base_momentum)
        update_momentum(self.backbone, self.teacher_backbone, momentum)
        update_momentum(self.projector, self.teacher_head, momentum)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        representation = self.backbone(images)
        return representation, self.projector.layers(representation)

    def prototypes(self) -> torch.Tensor:
        return prototype_weights(self.projector.last_layer).detach()
