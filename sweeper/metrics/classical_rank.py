"""Classical (numerical) rank of an embedding matrix.

Reference:
    Q. Garrido, R. Balestriero, L. Najman, Y. LeCun. "RankMe: Assessing the Downstream
    Performance of Pretrained Self-Supervised Representations by Their Rank." ICML 2023,
    App. F and H (the classical rank correlates with RankMe). The tolerance is the usual
    numerical-rank one (``numpy.linalg.matrix_rank``, ``torch.linalg.matrix_rank``).

Definition, for Z of shape (N, K) with singular values σ:

    rank(Z) = #{k : σ_k > σ_max · max(N, K) · eps(dtype of Z)}.
"""

from __future__ import annotations

import torch

from sweeper.metrics._utils import ArrayLike, _as_matrix, _dtype_eps, _singular_values_f64


def _classical_rank_from_singular_values(s: torch.Tensor, *, n: int, k: int, dtype_eps: float) -> int:
    """Counts ``s > s.max() · max(n, k) · dtype_eps`` (0 for an all-zero spectrum)."""
    s_max = float(s.max()) if s.numel() else 0.0
    if s_max <= 0.0:
        return 0
    return int((s > s_max * max(n, k) * dtype_eps).sum())


def classical_rank(z: ArrayLike) -> int:
    """Numerical rank of an embedding matrix (RankMe paper, App. F).

    Args:
        z: Embeddings Z, shape (N, K), raw (no centring); torch tensor (any float dtype, any
            device) or ndarray. The tolerance uses the machine epsilon of Z's own dtype
            (float32 input → 2⁻²³); integer inputs count as float64.

    Returns:
        The number of singular values above ``σ_max · max(N, K) · eps(dtype)``; 0 for an
        all-zero matrix. The singular values are computed in float64.

    Raises:
        ValueError: if Z is not 2-D, is empty, or holds NaN/inf.
    """
    t = _as_matrix(z)
    s = _singular_values_f64(t)
    n, k = t.shape
    return _classical_rank_from_singular_values(s, n=n, k=k, dtype_eps=_dtype_eps(t.dtype))
