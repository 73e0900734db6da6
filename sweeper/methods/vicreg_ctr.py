"""VICReg-ctr (Garrido, Chen, Bardes, Najman, LeCun, "On the duality between contrastive and
non-contrastive self-supervised learning", ICLR 2023; restated in RankMe, papers/000 App. A).

VICReg-exp applied to the transposed embedding matrix Zᵀ (d, N): the variance hinge then acts
on each sample's spread over its dimensions (a norm regulariser of the embeddings) and the
exponential covariance pushes the embeddings of different samples apart — a sample-contrastive
criterion, conceptually SimCLR. For embeddings Z, Z' (N, d) of two views:

    L = λ·MSE(Z, Z') + μ·½[v(Zᵀ) + v(Z'ᵀ)] + ν·[c_exp(Zᵀ) + c_exp(Z'ᵀ)]

with v and c_exp as in :mod:`sweeper.methods.vicreg_exp` (C(Zᵀ) is the N × N covariance between
samples, each centred over its d dimensions, divided by d − 1). The invariance term is unchanged
by the transpose. The loss therefore IS :func:`~sweeper.methods.vicreg_exp.vicreg_exp_loss` on
Zᵀ, Z'ᵀ (``transposed=True``); this module only names it.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from sweeper.hyperparams import VICRegCtrParams
from sweeper.methods.vicreg_exp import VICRegExp, vicreg_exp_loss

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
    """λ·MSE(Z, Z') + μ·½[v(Zᵀ) + v(Z'ᵀ)] + ν·[c_exp(Zᵀ) + c_exp(Z'ᵀ)] for embeddings (N, d):
    VICReg-exp's loss on the transposed embeddings."""
    return vicreg_exp_loss(
        z_a,
        z_b,
        inv_weight=inv_weight,
        var_weight=var_weight,
        cov_weight=cov_weight,
        temperature=temperature,
        eps=eps,
        transposed=True,
    )


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
    hyperparameters = VICRegCtrParams
    transposed: ClassVar[bool] = True
