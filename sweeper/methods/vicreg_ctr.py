"""VICReg-ctr (Garrido, Chen, Bardes, Najman, LeCun, "On the duality between contrastive and
non-contrastive self-supervised learning", ICLR 2023; restated in RankMe, papers/000 App. A).

VICReg-exp applied to the transposed embedding matrix Zᵀ (d, N): the variance hinge then acts
on each sample's spread over its dimensions (a norm regulariser of the embeddings) and the
exponential covariance pushes the embeddings of different samples apart — a sample-contrastive
criterion, conceptually SimCLR. For embeddings Z, Z' (N, d) of two views:

    L = λ·MSE(Z, Z') + μ·½[v(Zᵀ) + v(Z'ᵀ)] + ν·[c_exp(Zᵀ) + c_exp(Z'ᵀ)]

with v and c_exp as in :mod:`sweeper.methods.vicreg_exp` (C(Zᵀ) is the N × N covariance between
samples, each centred over its d dimensions, divided by d − 1). The invariance term is unchanged
by the transpose.
"""

from __future__ import annotations

import torch
from lightly.loss.vicreg_loss import invariance_loss, variance_loss

from sweeper.methods.vicreg_exp import VICRegExp, exp_covariance_loss

__all__ = ["VICRegCtr", "vicreg_ctr_loss"]


def vicreg_ctr_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    *,
    inv_weight: float,
    var_weight: float,
    cov_weight: float,
    temperature: float,
    eps: float = 1e-4,
) -> torch.Tensor:
    """λ·MSE(Z, Z') + μ·½[v(Zᵀ) + v(Z'ᵀ)] + ν·[c_exp(Zᵀ) + c_exp(Z'ᵀ)] for embeddings (N, d)."""
    t_a, t_b = z_a.T, z_b.T
    var = 0.5 * (variance_loss(t_a, eps=eps) + variance_loss(t_b, eps=eps))
    cov = exp_covariance_loss(t_a, temperature) + exp_covariance_loss(t_b, temperature)
    return inv_weight * invariance_loss(z_a, z_b) + var_weight * var + cov_weight * cov


class VICRegCtr(VICRegExp):
    """VICReg-ctr; embedding = expander output z (B, K).

    Args:
        inv_weight: λ, weight of the invariance (MSE) term.
        var_weight: μ, weight of the per-sample variance hinge.
        cov_weight: ν, weight of the exponential (sample-contrastive) covariance term; ν → 0
            leaves nothing that separates samples and collapses the embeddings.
        temperature: τ of the LogSumExp over sample covariances.
    """

    name = "vicreg_ctr"

    @staticmethod
    def loss(z_a: torch.Tensor, z_b: torch.Tensor, **weights: float) -> torch.Tensor:
        return vicreg_ctr_loss(z_a, z_b, **weights)
