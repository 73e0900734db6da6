"""Coherence and pseudo-condition number of an embedding matrix.

Reference:
    A. Tsitsulin, M. Munkhoeva, B. Perozzi. "Unsupervised Embedding Quality Evaluation."
    2023 (https://arxiv.org/abs/2305.16562). Their reference code (TF-GNN's
    ``contrastive_losses`` metrics) centres the embeddings first; so do we.

Definition (METHODS.md), for embeddings Z of shape (N, K), **centred**: Z_c = Z − mean of the
rows. With the thin SVD Z_c = U Σ Vᵀ and K_r the number of non-zero singular values (σ above
σ_max · max(N, K) · eps(dtype of Z), the numerical-rank tolerance of `classical_rank`), U
restricted to those K_r columns:

    coherence(Z) = max_i ‖U_i‖² · N / K_r        (‖U_i‖²: the leverage score of row i)
    pseudo_condition(Z) = σ_1 / σ_{K_r}

What the values mean: the leverage scores sum to K_r, so coherence is the largest one relative
to a uniform spread, in [1, N / K_r]: 1 when every sample carries the same share of the spanned
subspace, N / K_r when a single sample alone spans a direction (a few outliers define the
features). The pseudo-condition number measures how fast the spectrum decays: 1 for a flat
spectrum, large when a few directions dominate. Lower is better for both (Tsitsulin et al.).
TF-GNN divides by the smallest of *all* singular values (clamped at 1e-6); here only the
non-zero ones count, so a rank-deficient but well-spread embedding stays finite.

Cost: one K × K Gram, its eigendecomposition and two passes over the rows projected on the K_r
kept directions, ``U_i = z_i V Σ⁻¹`` — O(N·K²), never an N × N matrix — when N ≥ 2K or over
row shards; a float64 thin SVD of Z_c otherwise. The projected rows are re-orthonormalised by a
Cholesky factor of their own Gram (Cholesky-QR), so eigenvector rounding of the small
directions does not enter the leverage scores.
"""

from __future__ import annotations

import math

import torch

from sweeper import distributed
from sweeper.metrics._utils import (
    _F64,
    _GRAM_ASPECT,
    _TAIL_RATIO,
    ArrayLike,
    _agree,
    _as_matrix,
    _as_shard,
    _desc,
    _dtype_eps,
    _gram,
    _Processes,
    _row_blocks,
    _singular_values_f64,
)
from sweeper.metrics.classical_rank import _classical_rank_from_singular_values


def coherence_and_condition(z: ArrayLike, *, max_samples: int | None = None) -> tuple[float, float]:
    """Coherence and pseudo-condition number (Tsitsulin et al. 2023) from one decomposition.

    Args:
        z: Embeddings Z, shape (N, K); centred here (see the module docstring). Torch tensor
            (any float dtype, any device) or ndarray.
        max_samples: Use only the first ``max_samples`` rows (all if None); the evaluator
            passes ``evaluation.rankme_samples``.

    Returns:
        ``(coherence, pseudo_condition)``, computed in float64: coherence in [1, N / K_r],
        pseudo-condition ≥ 1. Both NaN when the centred Z is zero (all rows equal, or N = 1):
        no direction is spanned.

    Raises:
        ValueError: if Z is not 2-D, is empty, or holds NaN/inf.
    """
    t = _as_matrix(z, max_samples=max_samples)
    return _coherence_and_condition(t, processes=None)


def coherence(z: ArrayLike, *, max_samples: int | None = None) -> float:
    """Coherence max_i ‖U_i‖² · N / K_r of the centred embeddings (see
    :func:`coherence_and_condition`)."""
    return coherence_and_condition(z, max_samples=max_samples)[0]


def pseudo_condition(z: ArrayLike, *, max_samples: int | None = None) -> float:
    """Pseudo-condition number σ_1 / σ_{K_r} of the centred embeddings (see
    :func:`coherence_and_condition`)."""
    return coherence_and_condition(z, max_samples=max_samples)[1]


def distributed_coherence_and_condition(shard: ArrayLike) -> tuple[float, float]:
    """:func:`coherence_and_condition` of the rows of every process's ``shard`` together.

    A collective over the default ``torch.distributed`` group: every process passes its own
    rows (n_r, K), possibly none. The mean, the K × K Gram of the centred rows and the Gram of
    the projected rows are sums over rows (all-reduced), the bases are rank 0's, and the largest
    leverage score is an all-reduced maximum: the values equal those of the concatenated shards
    to float64 rounding, without gathering a row. In a single process, the Gram path.

    Raises:
        ValueError: if a shard is not 2-D or holds NaN/inf, or every shard is empty.
    """
    t = _as_shard(shard, name="shard")
    return _coherence_and_condition(t, processes=_Processes())


def _coherence_and_condition(z: torch.Tensor, *, processes: _Processes | None) -> tuple[float, float]:
    n, k = z.shape
    device = z.device
    if processes is not None:
        n = processes.rows(n, device)
        if n == 0:
            raise ValueError("every process's shard is empty: no rows to compute a coherence from")
    total = torch.zeros(k, dtype=_F64, device=device)
    for block in _row_blocks(z):
        total += block.sum(dim=0)
    mean = (total if processes is None else processes.sum_(total)) / n
    if processes is None and n < _GRAM_ASPECT * k:
        return _by_svd(z, mean)
    return _by_gram(z, mean, n=n, processes=processes)


def _kept(sigma: torch.Tensor, *, n: int, k: int, dtype: torch.dtype) -> int:
    """K_r: the singular values above the numerical-rank tolerance of Z's dtype."""
    return _classical_rank_from_singular_values(sigma, n=n, k=k, dtype_eps=_dtype_eps(dtype))


def _by_svd(z: torch.Tensor, mean: torch.Tensor) -> tuple[float, float]:
    """Thin float64 SVD of the centred Z (near-square or wide matrices)."""
    n, k = z.shape
    u, sigma, _ = torch.linalg.svd(z.to(_F64) - mean, full_matrices=False)
    kept = _kept(sigma, n=n, k=k, dtype=z.dtype)
    if kept == 0:
        return math.nan, math.nan
    leverage = u[:, :kept].square().sum(dim=1)
    return float(leverage.max()) * n / kept, float(sigma[0] / sigma[kept - 1])


def _by_gram(z: torch.Tensor, mean: torch.Tensor, *, n: int, processes: _Processes | None) -> tuple[float, float]:
    """Leverage scores from the K × K Gram: U_i = z_i V_r Σ_r⁻¹, refined by Cholesky-QR."""
    k = z.shape[1]
    device = z.device
    gram = _gram(z, shift=mean, processes=processes)
    lam, vectors = torch.linalg.eigh(gram, UPLO="U")
    flat_enough = float(lam[0]) >= _TAIL_RATIO * float(lam[-1]) and float(lam[-1]) > 0.0
    if _agree(processes, flat_enough, device):
        sigma = _desc(lam.clamp(min=0.0).sqrt())
    else:  # small singular values: the deflated Gram path resolves them (see rankme)
        sigma = _singular_values_f64(z, shift=mean, processes=processes)
    kept = _kept(sigma[: min(n, k)], n=n, k=k, dtype=z.dtype)
    if kept == 0:
        return math.nan, math.nan
    basis = vectors.flip(dims=(1,))[:, :kept] / sigma[:kept]
    if processes is not None:
        basis = processes.same(basis)
    # The projected rows' Gram is ≈ I; its Cholesky factor L makes them orthonormal exactly.
    projected = _gram(z, shift=mean, basis=basis, processes=processes)
    projected = projected.triu() + projected.triu(diagonal=1).T
    factor, info = torch.linalg.cholesky_ex(projected)
    if not _agree(processes, int(info) == 0, device):
        lam_p, vec_p = torch.linalg.eigh(projected)
        kept_p = lam_p > lam_p[-1] * _TAIL_RATIO
        whiten = vec_p[:, kept_p] * lam_p[kept_p].rsqrt()
    else:
        whiten = torch.linalg.solve_triangular(factor, torch.eye(kept, dtype=_F64, device=device), upper=False).T
    if processes is not None:
        whiten = processes.same(whiten.contiguous())
    rows = basis @ whiten
    largest = torch.zeros((), dtype=_F64, device=device)
    for block in _row_blocks(z, shift=mean):
        largest = torch.maximum(largest, (block @ rows).square().sum(dim=1).max())
    if processes is not None:
        largest = distributed.all_reduce_(largest.reshape(1), op="max")[0]
    return float(largest) * n / kept, float(sigma[0] / sigma[kept - 1])
