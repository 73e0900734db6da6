"""NESum: normalised eigenvalue sum of the embedding covariance.

Reference:
    B. He, M. Ozay. "Exploring the Gap between Collapsed & Whitened Features in
    Self-Supervised Learning." ICML 2022 (https://arxiv.org/abs/2206.04306).

Definition, for Z of shape (N, K) with sample-covariance eigenvalues λ_1 ≥ λ_2 ≥ … ≥ 0
(covariance ``(Z − μ)ᵀ(Z − μ)/(N − 1)``):

    NESum(Z) = Σ_i λ_i / λ_1.
"""

from __future__ import annotations

import torch

from sweeper.metrics._utils import ArrayLike, _as_matrix, _covariance_eigenvalues


def _nesum_from_eigenvalues(lam: torch.Tensor) -> float:
    """``Σλ / λ_max`` of covariance eigenvalues; 1.0 if the covariance is zero."""
    lam = lam.to(torch.float64).clamp(min=0.0)
    top = float(lam.max()) if lam.numel() else 0.0
    if top <= 0.0:
        return 1.0
    return float(lam.sum()) / top


def nesum(z: ArrayLike) -> float:
    """NESum (He & Ozay, 2022): ``Σ_i λ_i / λ_1`` of the covariance of Z.

    Args:
        z: Embeddings Z, shape (N, K) with N ≥ 2; torch tensor (any float dtype, any device)
            or ndarray. Centred internally (unlike RankMe).

    Returns:
        A float in [1, min(N − 1, K)], computed in float64; 1.0 when every row is identical
        (zero covariance: complete collapse).

    Raises:
        ValueError: if Z is not 2-D, has fewer than 2 rows, or holds NaN/inf.
    """
    return _nesum_from_eigenvalues(_covariance_eigenvalues(_as_matrix(z)))
