"""VICReg-exp (Garrido, Chen, Bardes, Najman, LeCun, "On the duality between contrastive and
non-contrastive self-supervised learning", ICLR 2023; restated in RankMe, papers/000 App. A).

VICReg with its sum-of-squares covariance penalty replaced by a LogSumExp over the off-diagonal
covariances. For embeddings Z, Z' (N, d) of two views:

    L = λ·MSE(Z, Z') + μ·½[v(Z) + v(Z')] + ν·[c_exp(Z) + c_exp(Z')]

    v(Z)     = (1/d) Σ_j relu(1 − sqrt(Var(Z_{·,j}) + ε))                 (VICReg's variance hinge)
    c_exp(Z) = (1/d) Σ_i log Σ_{j≠i} exp(C(Z)_{i,j} / τ)                  (papers/000 eq. 4)
    C(Z)     = (Z − Z̄)ᵀ(Z − Z̄) / (N − 1)                                  (d × d covariance)

The invariance and variance terms are lightly's (``lightly.loss.vicreg_loss``, the ½ on the
variance as in lightly's ``VICRegLoss`` and the VICReg code); lightly has no exponential
covariance, so :func:`exp_covariance_loss` is ours. In a data-parallel trial the method gathers
the embeddings of the global batch (differentiably, :func:`sweeper.distributed.gather_cat`)
before the loss, whose variances and covariances (over samples, or for VICReg-ctr the N × N
covariance between samples) are thus the global batch's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from lightly.loss.vicreg_loss import invariance_loss, variance_loss

from sweeper.distributed import gather_cat
from sweeper.hyperparams import VICRegExpParams
from sweeper.methods.base import SSLMethod
from sweeper.models import Backbone, build_projector

__all__ = ["VICRegExp", "exp_covariance_loss", "vicreg_exp_loss"]


def exp_covariance_loss(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """c_exp(Z) = (1/d) Σ_i log Σ_{j≠i} exp(C(Z)_{i,j} / τ) (Garrido et al. 2022; papers/000 eq. 4).

    Args:
        z: (N, d) — N samples (rows) of d dimensions; C(Z) is the (d, d) covariance of the
            columns, centred over the rows and divided by N − 1, as in VICReg.
        temperature: τ > 0.

    Returns:
        A scalar: the row-wise LogSumExp of the off-diagonal covariances, averaged over the d rows.
    """
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    diagonal = torch.eye(d, dtype=torch.bool, device=z.device)
    logits = (cov / temperature).masked_fill(diagonal, float("-inf"))
    return torch.logsumexp(logits, dim=1).mean()


def vicreg_exp_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    *,
    inv_weight: float,
    var_weight: float,
    cov_weight: float,
    temperature: float,
    eps: float = 1e-4,
    transposed: bool = False,
) -> torch.Tensor:
    """λ·MSE(Z, Z') + μ·½[v(Z) + v(Z')] + ν·[c_exp(Z) + c_exp(Z')] for embeddings (N, d) of two views.

    ``transposed=True`` gives the same loss on Zᵀ, Z'ᵀ (d, N): VICReg-ctr (Garrido et al. 2022),
    see :mod:`sweeper.methods.vicreg_ctr`. Only the variance and covariance terms see the
    transpose; the MSE is the same on Z and Zᵀ, so it is computed on Z.
    """
    r_a, r_b = (z_a.T, z_b.T) if transposed else (z_a, z_b)
    var = 0.5 * (variance_loss(r_a, eps=eps) + variance_loss(r_b, eps=eps))
    cov = exp_covariance_loss(r_a, temperature) + exp_covariance_loss(r_b, temperature)
    return inv_weight * invariance_loss(z_a, z_b) + var_weight * var + cov_weight * cov


class VICRegExp(SSLMethod):
    """VICReg-exp; embedding = expander output z (B, K).

    Args:
        inv_weight: λ, weight of the invariance (MSE) term.
        var_weight: μ, weight of the variance hinge.
        cov_weight: ν, weight of the exponential covariance term; ν → 0 collapses dimensions.
        temperature: τ of the LogSumExp over covariances.
    """

    name = "vicreg_exp"
    hyperparameters = VICRegExpParams
    transposed: ClassVar[bool] = False  # True: the loss on Zᵀ (VICReg-ctr)

    def __init__(
        self,
        backbone: Backbone,
        *,
        projector: Sequence[int],
        inv_weight: float,
        var_weight: float,
        cov_weight: float,
        temperature: float,
    ) -> None:
        super().__init__(backbone, build_projector(backbone.dim, projector), embedding_dim=projector[-1])
        self.weights = {"inv_weight": inv_weight, "var_weight": var_weight, "cov_weight": cov_weight}
        self.temperature = temperature

    def training_loss(self, views: Sequence[torch.Tensor], *, progress: float) -> torch.Tensor:
        z_a, z_b = (gather_cat(self.projector(self.backbone(view))) for view in views)
        return vicreg_exp_loss(z_a, z_b, temperature=self.temperature, transposed=self.transposed, **self.weights)
