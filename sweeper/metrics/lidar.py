"""LiDAR: the effective rank of the linear-discriminant matrix of augmented views.

Reference:
    V. Thilak, C. Huang, O. Saremi, L. Dinh, H. Goh, P. Nakkiran, J. M. Susskind, E. Littwin.
    "LiDAR: Sensing Linear Probing Performance in Joint Embedding SSL Architectures."
    ICLR 2024 (https://arxiv.org/abs/2312.04000).

Definition (METHODS.md). Views z_{x,i} of shape (n, q, K): n clean samples ("classes"), q
augmented views each. With per-sample means μ_x and grand mean μ:

    Σ_b = 1/(n − 1) · Σ_x (μ_x − μ)(μ_x − μ)ᵀ
    Σ_w = 1/(n (q − 1)) · Σ_x Σ_i (z_{x,i} − μ_x)(z_{x,i} − μ_x)ᵀ + δ I
    Σ_lidar = Σ_w^(−1/2) Σ_b Σ_w^(−1/2)
    LiDAR = exp(−Σ_k p_k log p_k),  p_k = λ_k / Σ_j λ_j + ε,  λ = eigenvalues of Σ_lidar.

What the value means: LiDAR is the effective number of directions along which sample identity
(between-sample spread) stands out from view noise (within-sample spread), after whitening
the latter. It is invariant to rotations, and to any invertible linear map up to δ.
If the views carry *no* sample identity (all views i.i.d.), Σ_w^(−1/2) Σ_b Σ_w^(−1/2) ≈ I/q:
LiDAR is then close to its maximum K (finite-sample Marchenko–Pastur spread lowers it to
≈ K·exp(−γ/2) with γ = K/(n − 1) for small γ) — *not* 1. It is low (≈ r) when sample identity
lives in an r-dimensional subspace that dominates the within-sample noise.
"""

from __future__ import annotations

import torch

from sweeper import distributed
from sweeper.metrics._utils import (
    ArrayLike,
    _check_finite,
    _entropy_effective_rank,
    _row_block_size,
    _SymAccumulator,
    _to_tensor,
)


def _lidar_from_covariances(between: torch.Tensor, within: torch.Tensor, *, delta: float, eps: float) -> float:
    """LiDAR from Σ_b and the *unregularised* Σ_w (K × K, float64; Σ_w read from its upper
    triangle only)."""
    k = within.shape[0]
    w = within + delta * torch.eye(k, dtype=within.dtype, device=within.device)
    lam_w, vec_w = torch.linalg.eigh(w, UPLO="U")
    inv_sqrt = (vec_w * lam_w.clamp(min=delta).rsqrt()) @ vec_w.T
    m = inv_sqrt @ between @ inv_sqrt
    lam = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0.0)
    return _entropy_effective_rank(lam, eps=eps)


def _check_views(views: ArrayLike, *, delta: float, min_samples: int) -> torch.Tensor:
    v = _to_tensor(views, name="views")
    if v.dim() != 3:
        raise ValueError(f"views must be 3-D (n samples × q views × K), got shape {tuple(v.shape)}")
    n, q, k = v.shape
    if n < min_samples or q < 2 or k < 1:
        raise ValueError(f"LiDAR needs n ≥ 2 samples with q ≥ 2 views each, got shape {(n, q, k)}")
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta}")
    _check_finite(v, name="views")
    return v


def _means_and_within(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample means (n, K) and the within-sample scatter Σ_x Σ_i (z − μ_x)(z − μ_x)ᵀ (K × K,
    valid in its upper triangle), in float64, by blocks of samples."""
    n, q, k = v.shape
    means = torch.zeros(n, k, dtype=torch.float64, device=v.device)
    within_acc = _SymAccumulator(k, v.device)
    step = max(1, _row_block_size(q * k))
    for start in range(0, n, step):
        block = v[start : start + step].to(torch.float64)
        block_means = block.mean(dim=1)
        means[start : start + step] = block_means
        within_acc.add((block - block_means[:, None, :]).reshape(-1, k))
    return means, within_acc.upper()


def lidar(views: ArrayLike, *, delta: float = 1e-4, eps: float = 1e-7) -> float:
    """LiDAR (Thilak et al., ICLR 2024) of the embeddings of augmented views.

    Args:
        views: Embeddings of q augmented views of each of n samples, shape (n, q, K), n ≥ 2,
            q ≥ 2; torch tensor (any float dtype, any device) or ndarray.
        delta: δ added to the diagonal of the within-sample covariance (1e-4; absolute, so
            LiDAR is not scale invariant when the embeddings are of order sqrt(δ) or smaller).
        eps: ε added to each normalised eigenvalue (1e-7, as in RankMe).

    Returns:
        LiDAR in [1, K] (up to O(K·eps)), computed in float64. 1.0 when the per-sample means are
        all equal (Σ_b = 0: no sample identity survives, e.g. a collapsed encoder). Views that
        carry no sample identity but are not collapsed give ≈ K (see module docstring).

    Raises:
        ValueError: if views is not 3-D, n < 2 or q < 2, or it holds NaN/inf.
    """
    v = _check_views(views, delta=delta, min_samples=2)
    n, q, _ = v.shape
    means, within = _means_and_within(v)
    centred = means - means.mean(dim=0)
    between = (centred.T @ centred) / (n - 1)
    return _lidar_from_covariances(between, within / (n * (q - 1)), delta=delta, eps=eps)


def distributed_lidar(views: ArrayLike, *, delta: float = 1e-4, eps: float = 1e-7) -> float:
    """LiDAR of the views of every process's samples together, without gathering them.

    A collective over the default ``torch.distributed`` group: each process passes the views
    (n_r, q, K) of its own samples (n_r may be 0; q and K the same everywhere). Σ_w is a sum over
    samples, and so is Σ_b once centred on the grand mean, which one all-reduce of the sample
    means' sum gives; two more all-reduces (of the K × K scatters) give exactly the covariances
    of :func:`lidar` on the concatenated views, and its value to ~1e-12 relative.

    Raises:
        ValueError: as :func:`lidar` (n counted over all processes).
    """
    v = _check_views(views, delta=delta, min_samples=0)
    q = v.shape[1]
    means, within = _means_and_within(v)
    header = torch.cat([means.new_tensor([means.shape[0]]), means.sum(dim=0)])
    distributed.all_reduce_(header)
    n = int(header[0].item())
    if n < 2:
        raise ValueError(f"LiDAR needs n ≥ 2 samples over all processes, got {n}")
    centred = means - header[1:] / n
    between = distributed.all_reduce_(centred.T @ centred) / (n - 1)
    within = distributed.all_reduce_(within.clone()) / (n * (q - 1))
    return _lidar_from_covariances(between, within, delta=delta, eps=eps)
