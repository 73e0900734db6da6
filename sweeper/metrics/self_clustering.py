"""Self-clustering: how far the embeddings' cosine similarities are from random directions.

Reference:
    A. Tsitsulin, M. Munkhoeva, B. Perozzi. "Unsupervised Embedding Quality Evaluation."
    TAG-ML workshop, PMLR 221:169-188, 2023 (https://arxiv.org/abs/2305.16562).

Definition used here (our explicit form of the paper's description). Let Ẑ be Z (N, K) with
every non-zero row L2-normalised (all-zero rows are dropped; n rows remain) and
``S = ‖ẐẐᵀ‖_F² = Σ_{i,j} cos²(z_i, z_j)``. For n independent directions uniform on the
sphere S^(K−1), ``E[cos²] = 1/K`` off the diagonal, so ``E[S] = n + n(n − 1)/K``; for full
collapse (every row equal up to sign) ``S = n²``. The score rescales S between the two:

    self_clustering(Z) = (S − n − n(n − 1)/K) / (n² − n − n(n − 1)/K)
                       = (S − n − n(n − 1)/K) / (n (n − 1) (1 − 1/K)).

1 = full collapse, 0 in expectation for random (e.g. isotropic Gaussian) rows, and the
minimum −1/(K − 1) for mutually orthogonal rows (n ≤ K). Antipodal rows count as collapsed
(cos² = 1), as in the paper's squared similarity.
"""

from __future__ import annotations

import torch

from sweeper.metrics._utils import ArrayLike, _as_matrix, _row_blocks, _SymAccumulator


def _self_clustering_from_sum(sq_sum: float, *, n: int, k: int) -> float:
    """Rescales ``S = ‖ẐẐᵀ‖_F²`` of n unit rows in k dimensions (see module docstring).

    Fewer than 2 non-zero rows, or k = 1 (every unit vector is ±1), are complete collapse: 1.0.
    """
    if n < 2 or k < 2:
        return 1.0
    random_sq = n + n * (n - 1) / k
    return (sq_sum - random_sq) / (n * n - random_sq)


def _normalize_rows(block: torch.Tensor) -> torch.Tensor:
    """Float64 rows scaled to unit norm; all-zero rows removed."""
    norms = torch.linalg.vector_norm(block, dim=1)
    keep = norms > 0
    return block[keep] / norms[keep, None]


def self_clustering(z: ArrayLike) -> float:
    """Self-clustering score (Tsitsulin et al., 2023) of an embedding matrix.

    Args:
        z: Embeddings Z, shape (N, K); torch tensor (any float dtype, any device) or ndarray.
            Rows are L2-normalised internally; all-zero rows are ignored.

    Returns:
        ``(‖ẐẐᵀ‖_F² − n − n(n−1)/K) / (n² − n − n(n−1)/K)`` over the n non-zero rows, in
        float64 (formula and derivation in the module docstring): 1.0 when all rows are equal up
        to sign (full collapse, also returned for fewer than 2 non-zero rows or K = 1), ≈ 0 for
        random directions, ≥ −1/(K − 1).

    Raises:
        ValueError: if Z is not 2-D, is empty, or holds NaN/inf.
    """
    t = _as_matrix(z)
    n_rows, k = t.shape
    if n_rows >= k:
        # ‖ẐẐᵀ‖_F = ‖ẐᵀẐ‖_F: accumulate the K × K Gram of the normalised rows by blocks.
        acc = _SymAccumulator(k, t.device)
        n = 0
        for block in _row_blocks(t):
            unit = _normalize_rows(block)
            n += unit.shape[0]
            acc.add(unit)
        sq_sum = acc.sq_sum()
    else:
        unit = _normalize_rows(t.to(torch.float64))
        n = unit.shape[0]
        sq_sum = float((unit @ unit.T).square().sum())
    return _self_clustering_from_sum(sq_sum, n=n, k=k)
