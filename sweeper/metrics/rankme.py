"""RankMe: the effective rank of an embedding matrix.

Reference:
    Q. Garrido, R. Balestriero, L. Najman, Y. LeCun. "RankMe: Assessing the Downstream
    Performance of Pretrained Self-Supervised Representations by Their Rank." ICML 2023.
    https://arxiv.org/abs/2210.02885 (§3.1, eq. 1; effective rank of Roy & Vetterli, 2007).

Definition (METHODS.md), for raw embeddings Z of shape (N, K) — no centring, no normalisation:

    σ = singular values of Z,  p_k = σ_k / Σ_j σ_j + ε,  RankMe(Z) = exp(−Σ_k p_k log p_k).
"""

from __future__ import annotations

import torch

from sweeper.metrics._utils import (
    ArrayLike,
    _as_matrix,
    _as_shard,
    _entropy_effective_rank,
    _Processes,
    _singular_values_f64,
    _to_tensor,
)


def singular_values(z: ArrayLike, *, max_samples: int | None = None) -> torch.Tensor:
    """Singular values of an embedding matrix, for plots and for `rankme_from_singular_values`.

    Args:
        z: Embeddings, shape (N, K); a torch tensor (any float dtype, any device) or an ndarray.
        max_samples: Use only the first ``max_samples`` rows (all rows if None).

    Returns:
        The min(N, K) singular values of the raw Z, float64, descending, on CPU. Computed in
        float64 (a Gram path for N ≥ 2K or K ≥ 2N, a float64 SVD otherwise); agrees with
        ``numpy.linalg.svd(Z.astype(float64))`` to ~1e-12·σ_max absolute.

    Raises:
        ValueError: if Z is not 2-D, is empty, or holds NaN/inf.
    """
    t = _as_matrix(z, max_samples=max_samples)
    return _singular_values_f64(t).cpu()


def rankme_from_singular_values(s: ArrayLike, *, eps: float = 1e-7) -> float:
    """RankMe from precomputed singular values.

    Args:
        s: Singular values, shape (R,), non-negative (any order).
        eps: ε added to every normalised singular value (1e-7 in the paper).

    Returns:
        ``exp(−Σ p_k log p_k)`` with ``p_k = s_k / Σ s + eps``, computed in float64. If every
        s_k is zero (an all-zero embedding matrix) the spectrum has no mass to spread and the
        result is defined as 1.0 — the value of a rank-1 collapse, RankMe's minimum.

    Raises:
        ValueError: if s is not 1-D, is empty, is non-finite or has negative entries.
    """
    v = _to_tensor(s, name="s")
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(f"s must be a non-empty 1-D tensor, got shape {tuple(v.shape)}")
    v = v.to(torch.float64)
    if not bool(torch.isfinite(v).all()):
        raise ValueError("s contains non-finite values (NaN or inf)")
    if bool((v < 0).any()):
        raise ValueError("singular values must be non-negative")
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    return _entropy_effective_rank(v, eps=eps)


def rankme(z: ArrayLike, *, eps: float = 1e-7, max_samples: int | None = 25600) -> float:
    """RankMe (Garrido et al., ICML 2023) of an embedding matrix.

    Args:
        z: Embeddings Z, shape (N, K): the projector output (or the representations) of N
            samples. A torch tensor of any floating dtype on any device (the computation runs
            there), or a numpy array. Used raw: no centring, no normalisation.
        eps: ε added to each normalised singular value (1e-7 as in the paper).
        max_samples: Use only the first ``max_samples`` rows (25 600 as in the paper's App. G;
            None for all rows).

    Returns:
        ``exp(−Σ_k p_k log p_k)``, ``p_k = σ_k/Σσ + eps`` over the min(N, K) singular values σ
        of Z. Agrees with the float64 SVD formula to ≤ 1e-6 relative (in practice ≲ 1e-8;
        ~1e-15 where the float64 path runs). An all-zero Z returns 1.0 (see
        `rankme_from_singular_values`). The value lies in [1, min(N, K)] up to O(K·eps).

    Raises:
        ValueError: if Z is not 2-D, is empty, or holds NaN/inf (a diverged model).

    Note:
        When N ≥ 2K (the usual case: 25 600 × 2048) σ² are taken as the eigenvalues of the
        float64 Gram ZᵀZ (K × K, accumulated by row blocks, upper block triangle only), with a
        deflation step that recovers singular values below 1e-5·σ_max from Z itself; ZZᵀ when
        K ≥ 2N; a float64 SVD otherwise. For a float32 Z the Gram is first formed from float32
        products (half the cost) and kept only when the rounding they add, measured on 128
        columns against float64, is estimated to move RankMe by ≤ 2e-8 relative (full-rank
        spectra as flat as σ_i ∝ i^-1/2 qualify; steep or rank-deficient ones take the float64
        path). See ``bench/rankme.py`` for timings.
    """
    t = _as_matrix(z, max_samples=max_samples)
    return _entropy_effective_rank(_singular_values_f64(t, for_rankme=True), eps=eps)


def _distributed_singular_values(shard: ArrayLike, *, for_rankme: bool) -> torch.Tensor:
    t = _as_shard(shard, name="shard")
    processes = _Processes()
    if processes.rows(t.shape[0], t.device) == 0:
        raise ValueError("every process's shard is empty: no rows to compute a rank from")
    return _singular_values_f64(t, for_rankme=for_rankme, processes=processes)


def distributed_singular_values(shard: ArrayLike) -> torch.Tensor:
    """Singular values of the rows of every process's ``shard`` together, without gathering them.

    A collective over the default ``torch.distributed`` group: every process calls it with its
    own rows (an (n_r, K) matrix, possibly empty) and gets the min(N, K) singular values of the
    (N, K) matrix of all rows (float64, descending, on CPU): the eigenvalues of the K × K Gram
    ZᵀZ = Σ_r Z_rᵀZ_r, one all-reduce of the shards' Grams (more only when small singular values
    need `rankme`'s deflation, whose bases are rank 0's). In a single process, the Gram path of
    :func:`singular_values`.

    Raises:
        ValueError: if a shard is not 2-D or holds NaN/inf, or every shard is empty.
    """
    return _distributed_singular_values(shard, for_rankme=False).cpu()


def distributed_rankme(shard: ArrayLike, *, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., ICML 2023) of the rows of every process's ``shard`` together,
    without gathering the embeddings.

    RankMe needs only the singular values of Z, i.e. the eigenvalues of ZᵀZ, and ZᵀZ is a sum
    over samples: each process forms its shard's K × K Gram and one all-reduce gives the Gram of
    all N rows (:func:`distributed_singular_values`). For float32 embeddings the fast path of
    :func:`rankme` applies to the summed Gram, its rounding measured on the probe columns' exact
    float64 Gram, summed too; every branch follows rank 0, so all processes run the same
    collectives. The value equals :func:`rankme` of the concatenated shards (``max_samples=None``)
    to ~1e-10 relative. A collective: every process of the default group calls it.

    Raises:
        ValueError: if a shard is not 2-D or holds NaN/inf (a diverged model), or all are empty.
    """
    return _entropy_effective_rank(_distributed_singular_values(shard, for_rankme=True), eps=eps)
