"""α-ReQ: the power-law decay exponent of the embedding covariance spectrum.

Reference:
    K. K. Agrawal, A. K. Mondal, A. Ghosh, B. A. Richards. "α-ReQ: Assessing Representation
    Quality in Self-Supervised Learning by measuring eigenspectrum decay." NeurIPS 2022.

Definition, for Z of shape (N, K) with sample-covariance eigenvalues λ_1 ≥ λ_2 ≥ …
(covariance ``(Z − μ)ᵀ(Z − μ)/(N − 1)``): fit ``log λ_i = c − α · log i`` by least squares over
the ranks i of ``rank_range`` (1-based, inclusive). Good representations have α near 1; the
metric is not monotone (select the α closest to 1).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from sweeper.metrics._utils import (
    ArrayLike,
    _as_matrix,
    _covariance_eigenvalues,
    _dtype_eps,
)


class AlphaReq(NamedTuple):
    """Result of `alpha_req`.

    Attributes:
        alpha: Decay exponent α of ``λ_i ∝ i^(−α)`` (NaN if fewer than 2 ranks could be fitted).
        r2: Coefficient of determination of the log-log fit (NaN likewise; 1.0 for a power law
            exact to rounding, including a flat spectrum).
    """

    alpha: float
    r2: float


def _check_rank_range(rank_range: tuple[int, int]) -> tuple[int, int]:
    lo, hi = (int(r) for r in rank_range)
    if lo < 1 or hi <= lo:
        raise ValueError(f"rank_range must be (lo, hi) with 1 ≤ lo < hi, got {rank_range!r}")
    return lo, hi


def _alpha_req_from_eigenvalues(lam: torch.Tensor, *, rank_range: tuple[int, int], floor: float) -> AlphaReq:
    """Least-squares fit of ``log λ_i`` on ``log i`` over ``rank_range``.

    Args:
        lam: Covariance eigenvalues (any order).
        rank_range: Inclusive, 1-based ranks (lo, hi); clipped to the ranks whose eigenvalue
            exceeds ``floor`` (eigenvalues at or below it are numerically zero).
        floor: Absolute eigenvalue threshold.
    """
    lo, hi = _check_rank_range(rank_range)
    lam = torch.sort(lam.to(torch.float64).cpu(), descending=True).values
    available = int((lam > floor).sum())
    hi = min(hi, available)
    if hi - lo + 1 < 2:
        return AlphaReq(math.nan, math.nan)
    y = torch.log(lam[lo - 1 : hi])
    x = torch.log(torch.arange(lo, hi + 1, dtype=torch.float64))
    xc = x - x.mean()
    yc = y - y.mean()
    slope = float((xc * yc).sum() / (xc * xc).sum())
    residual = yc - slope * xc
    ss_res = float((residual * residual).sum())
    ss_tot = float((yc * yc).sum())
    # A fit exact to rounding (rms residual ≤ 1e-10 in log λ, e.g. a flat spectrum whose
    # eigenvalues differ only by rounding) has R² = 1, not the ratio of two rounding errors.
    exact = ss_res <= len(y) * 1e-20
    r2 = 1.0 if exact or ss_tot <= 0.0 else 1.0 - ss_res / ss_tot
    return AlphaReq(-slope, r2)


def alpha_req(z: ArrayLike, *, rank_range: tuple[int, int] = (10, 100)) -> AlphaReq:
    """α-ReQ (Agrawal et al., NeurIPS 2022) of an embedding matrix.

    Args:
        z: Embeddings Z, shape (N, K) with N ≥ 2; torch tensor (any float dtype, any device)
            or ndarray. Centred internally.
        rank_range: Inclusive 1-based ranks (lo, hi) of the fit, (10, 100) by default. Clipped
            to the numerically non-zero eigenvalues: those with
            ``λ_i > λ_1 · (max(N, K) · eps(dtype))²``, i.e. the classical rank of the centred Z.

    Returns:
        ``AlphaReq(alpha, r2)``: the fitted decay exponent (``λ_i ∝ i^(−alpha)``) and the R² of
        the log-log fit. Both are NaN when fewer than 2 ranks remain in the range (e.g. a
        collapsed covariance, or K < lo + 1).

    Raises:
        ValueError: if Z is not 2-D, has fewer than 2 rows, holds NaN/inf, or rank_range is
            not 1 ≤ lo < hi.
    """
    _check_rank_range(rank_range)
    t = _as_matrix(z)
    lam = _covariance_eigenvalues(t)
    top = float(lam.max())
    floor = top * (max(t.shape) * _dtype_eps(t.dtype)) ** 2 if top > 0 else 0.0
    return _alpha_req_from_eigenvalues(lam, rank_range=rank_range, floor=floor)
