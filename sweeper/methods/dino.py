"""DINO (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021;
papers/003 ch. 5).

A student g_θs and a teacher g_θt (EMA of the student, momentum 0.996 → 1 by a cosine schedule)
share one architecture: backbone, an MLP to an ℓ2-normalised bottleneck, and a weight-normalised
linear layer to K prototypes. For the teacher's global views t and the student's views s (B, K):

    P_t = softmax((g_θt(x) − c) / τ_t),   P_s = softmax(g_θs(x') / τ_s)
    L   = mean over pairs (x ≠ x') of mean_b [ −Σ_k P_t,k log P_s,k ]
    c  ← m·c + (1 − m)·mean_batch g_θt(x)                             (centre, papers/003 eq. 5.4)

with τ_t warmed up linearly from 0.04 to its final value. The loss and centring are lightly's
``DINOLoss`` (the scheduled τ_t is passed in per step), the head lightly's ``DINOProjectionHead``
(:func:`sweeper.models.build_prototype_head`, shared with CARP) with its MLP built from
``model.projector`` (hidden..., bottleneck; the paper: 2048-2048-256, GELU, BatchNorm only with
``head_batch_norm``) and ``num_prototypes`` outputs (the paper: 65 536).

Multi-crop: with ``num_local_crops`` > 0 the method asks for ``2 + num_local_crops`` views; the
first two are the global views (teacher and student), the rest local views (student only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss
from lightly.models.modules.heads import DINOProjectionHead

from sweeper.hyperparams import DINOParams
from sweeper.methods._multicrop import forward_views
from sweeper.methods._teacher import cosine_momentum, frozen_copy, update_momentum
from sweeper.methods.base import SSLMethod
from sweeper.models import Backbone, build_prototype_head, prototype_weights

__all__ = ["DINO", "teacher_temperature"]


def teacher_temperature(progress: float, *, warmup_temp: float, final_temp: float, warmup_fraction: float) -> float:
    """τ_t at ``progress`` ∈ [0, 1]: linear from ``warmup_temp`` to ``final_temp`` over the first
    ``warmup_fraction`` of training, then constant (DINO: 0.04 → 0.07 over 30 epochs)."""
    if warmup_fraction <= 0 or progress >= warmup_fraction:
        return final_temp
    return warmup_temp + (final_temp - warmup_temp) * progress / warmup_fraction


class DINO(SSLMethod):
    """DINO; embedding = the teacher's ℓ2-normalised bottleneck (B, bottleneck), the input of the
    prototype layer (RankMe, papers/000 App. C). The teacher is the network DINO evaluates, so
    :meth:`embed` and the probes read the teacher; :meth:`prototypes` is its last layer.

    Args:
        num_prototypes: K, the output dimension of the head.
        teacher_temp: final teacher temperature τ_t.
        warmup_teacher_temp: τ_t at the start of training.
        teacher_temp_warmup: fraction of training over which τ_t warms up (0: constant τ_t).
        student_temp: τ_s.
        center_momentum: m of the centre's EMA.
        base_momentum: base EMA momentum of the teacher (cosine-increased to 1).
        freeze_last_layer_epochs: epochs during which the prototype layer gets no update.
        head_batch_norm: BatchNorm in the head's hidden layers (DINO's ``use_bn_in_head``).
        num_local_crops: local views for the student (multi-crop); 0 = two global views only.
    """

    name = "dino"
    hyperparameters = DINOParams

    def __init__(
        self,
        backbone: Backbone,
        *,
        projector: Sequence[int],
        num_prototypes: int,
        teacher_temp: float,
        warmup_teacher_temp: float,
        teacher_temp_warmup: float,
        student_temp: float,
        center_momentum: float,
        base_momentum: float,
        freeze_last_layer_epochs: int,
        head_batch_norm: bool,
        num_local_crops: int,
    ) -> None:
        def head() -> DINOProjectionHead:
            return build_prototype_head(
                backbone.dim,
                projector,
                num_prototypes,
                batch_norm=head_batch_norm,
                freeze_last_layer=freeze_last_layer_epochs,
            )

        super().__init__(backbone, head(), embedding_dim=projector[-1])
        self.teacher_backbone = frozen_copy(self.backbone)
        self.teacher_head = frozen_copy(self.projector, twin=head())
        self.criterion = DINOLoss(
            output_dim=num_prototypes,
            warmup_teacher_temp=warmup_teacher_temp,
            teacher_temp=teacher_temp,
            warmup_teacher_temp_epochs=0,  # the schedule is ours: τ_t is passed in every step
            student_temp=student_temp,
            center_momentum=center_momentum,
        )
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.teacher_temp_warmup = teacher_temp_warmup
        self.base_momentum = base_momentum
        self.num_views = 2 + num_local_crops
        self.num_local_views = num_local_crops

    def _student(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def _teacher(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher_head(self.teacher_backbone(x))

    def training_loss(self, views: Sequence[torch.Tensor], *, progress: float) -> torch.Tensor:
        student_out = forward_views(self._student, views)
        with torch.no_grad():
            teacher_out = forward_views(self._teacher, views[:2])
        temperature = teacher_temperature(
            progress,
            warmup_temp=self.warmup_teacher_temp,
            final_temp=self.teacher_temp,
            warmup_fraction=self.teacher_temp_warmup,
        )
        return self.criterion(teacher_out, student_out, teacher_temp=temperature)

    def before_optimizer_step(self, *, progress: float, epoch: int) -> None:
        self.projector.cancel_last_layer_gradients(epoch)

    def after_step(self, *, progress: float) -> None:
        momentum = cosine_momentum(progress, self.base_momentum)
        update_momentum(self.backbone, self.teacher_backbone, momentum)
        update_momentum(self.projector, self.teacher_head, momentum)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        representation = self.teacher_backbone(images)
        return representation, F.normalize(self.teacher_head.layers(representation), dim=-1)

    def prototypes(self) -> torch.Tensor:
        return prototype_weights(self.teacher_head.last_layer).detach()
