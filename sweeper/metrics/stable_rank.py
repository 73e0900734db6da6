"""Stable rank of an embedding matrix.

Reference:
    M. Rudelson, R. Vershynin. "Sampling from large matrices: an approach through geometric
    functional analysis." Journal of the ACM 54(4), 2007 (the "numerical"/stable rank);
    listed among RankMe's peers in METHODS.md.

Definition, for raw Z of shape (N, K) with singular values σ:

    stable_rank(Z) = ‖Z‖_F² / σ_1² = Σ_k σ_k² / σ_1².
"""

from __future__ import annotations

import torch

from sweeper.metrics._utils import ArrayLike, _as_matrix, _singular_values_f64


def _stable_rank_from_squares(frobenius_sq: float, top_sq: float) -> float:
    """``‖Z‖_F² / σ_1²``; 1.0 when Z = 0 (no spectrum: the minimum, as for RankMe)."""
    if top_sq <= 0.0:
        return 1.0
    return frobenius_sq / top_sq


def stable_rank(z: ArrayLike) -> float:
    """Stable rank ``‖Z‖_F² / σ_1²`` of an embedding matrix.

    Args:
        z: Embeddings Z, shape (N, K), raw (no centring); torch tensor (any float dtype, any
            device) or ndarray.

    Returns:
        A float in [1, min(N, K)], computed in float64; 1.0 for an all-zero matrix.

    Raises:
        ValueError: if Z is not 2-D, is empty, or holds NaN/inf.
    """
    s = _singular_values_f64(_as_matrix(z)).to(torch.float64)
    sq = s.square()
    return _stable_rank_from_squares(float(sq.sum()), float(sq.max()))
