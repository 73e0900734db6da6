"""Streaming sufficient statistics of embeddings, for computing label-free metrics by batches.

`EmbeddingStats` never keeps the embeddings: it accumulates, in float64 on one device, the
shifted second moment ``Σ (z − c)(z − c)ᵀ``, the shifted sum ``Σ (z − c)`` (c = the mean of
the first batch, a shift that keeps the covariance free of cancellation when the embeddings
have a large mean), the Gram of the L2-normalised rows and the counts. From these:

- raw Gram  ZᵀZ = S + c sᵀ + s cᵀ + N c cᵀ   → σ² for RankMe, classical rank, stable rank;
- covariance (ZᵀZ − N μμᵀ)/(N − 1) = (S − s sᵀ/N)/(N − 1)   → α-ReQ, NESum;
- ‖ẐᵀẐ‖_F² of the normalised rows   → self-clustering.

LiDAR needs several views per sample and is not available here (use `sweeper.metrics.lidar`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sweeper import distributed
from sweeper.metrics._utils import (
    _EPS64,
    ArrayLike,
    _check_finite,
    _dtype_eps,
    _entropy_effective_rank,
    _float64_device,
    _row_blocks,
    _SymAccumulator,
    _to_tensor,
)
from sweeper.metrics.alpha_req import _alpha_req_from_eigenvalues, _check_rank_range
from sweeper.metrics.classical_rank import _classical_rank_from_singular_values
from sweeper.metrics.nesum import _nesum_from_eigenvalues
from sweeper.metrics.self_clustering import _normalize_rows, _self_clustering_from_sum
from sweeper.metrics.stable_rank import _stable_rank_from_squares
from sweeper.names import LABEL_FREE_METRICS

# Metrics that need the rows themselves (leverage scores, nearest neighbours) or augmented views.
_NEEDS_ROWS: tuple[str, ...] = ("lidar", "coherence", "pseudo_condition", "intrinsic_dimension", "lidar_representation")
_STREAMABLE: tuple[str, ...] = tuple(m for m in LABEL_FREE_METRICS if m not in _NEEDS_ROWS)


def _check_names(names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    for name in names:
        if name == "lidar":
            raise ValueError(
                "lidar needs q augmented views of each sample, shape (n, q, K); "
                "it cannot be computed from EmbeddingStats — call sweeper.metrics.lidar(views)"
            )
        if name in _NEEDS_ROWS:
            raise ValueError(f"{name} needs the embeddings' rows or views, not their Gram: not from EmbeddingStats")
        if name not in _STREAMABLE:
            raise ValueError(f"unknown metric {name!r}; EmbeddingStats computes {_STREAMABLE}")
    return names


class EmbeddingStats:
    """Accumulates embeddings batch by batch and computes label-free metrics from them.

    Memory: two (or one, see ``metrics``) K × K float64 matrices on ``device`` — 32 MiB each
    for K = 2048, 512 MiB for K = 8192 — whatever the number of samples. Each `update` costs
    O(B·K²) flops (half of a full product: only the upper block triangle).

    Accuracy: the metrics equal the direct functions (`rankme`, `classical_rank`, …) on the
    stacked batches to ~1e-10 relative, with one caveat: only the Gram is available here, so
    singular values below ~sqrt(K·eps64)·σ_max ≈ 1e-7·σ_max (K ≈ 2048) come out as rounding
    noise. This moves RankMe by ≲ 1e-5 relative on exactly low-rank embeddings (the direct
    `rankme` deflates them away) and for ``classical_rank`` the tolerance is raised to that
    noise level when it would be lower (only for float64 input).

    Args:
        dim: Embedding dimension K.
        max_samples: Rows beyond this many (over all updates) are ignored, as `rankme` does.
        device: Where to accumulate; None: the device of the first batch (the CPU for Apple
            ``mps``, which has no float64).
        metrics: The metric names that `compute` will be asked for (None: all of them). Without
            ``"self_clustering"`` the normalised Gram is not accumulated (half the memory and
            time).

    Example:
        >>> stats = EmbeddingStats(128)
        >>> for batch in loader:                              # doctest: +SKIP
        ...     stats.update(model(batch))
        >>> stats.compute(("rankme", "alpha_req"))            # doctest: +SKIP
        {'rankme': 97.3, 'alpha_req': 0.98, 'alpha_req_r2': 0.99}
    """

    def __init__(
        self,
        dim: int,
        *,
        max_samples: int = 25600,
        device: torch.device | str | None = None,
        metrics: Sequence[str] | None = None,
    ) -> None:
        if isinstance(dim, bool) or int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if isinstance(max_samples, bool) or max_samples < 1:
            raise ValueError(f"max_samples must be a positive integer, got {max_samples!r}")
        self.dim = int(dim)
        self.max_samples = int(max_samples)
        self._device = torch.device(device) if device is not None else None
        wanted = _STREAMABLE if metrics is None else _check_names(metrics)
        self._track_normalized = "self_clustering" in wanted
        self._n = 0
        self._n_nonzero = 0
        self._dtype_eps = 0.0
        self._shift: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._second: _SymAccumulator | None = None
        self._normalized: _SymAccumulator | None = None

    @property
    def num_samples(self) -> int:
        """Number of rows accumulated so far (at most ``max_samples``)."""
        return self._n

    def _allocate(self, device: torch.device) -> None:
        device = _float64_device(device)
        self._device = device
        self._sum = torch.zeros(self.dim, dtype=torch.float64, device=device)
        self._second = _SymAccumulator(self.dim, device)
        if self._track_normalized:
            self._normalized = _SymAccumulator(self.dim, device)

    def update(self, z: ArrayLike) -> None:
        """Adds a batch of embeddings.

        Args:
            z: Shape (B, dim); torch tensor (any float dtype, any device) or ndarray. Rows past
                ``max_samples`` (counting earlier batches) are silently ignored.

        Raises:
            ValueError: on a wrong shape, or if the rows used hold NaN/inf.
        """
        t = _to_tensor(z, name="z")
        if t.dim() != 2 or t.shape[1] != self.dim:
            raise ValueError(f"expected a batch of shape (B, {self.dim}), got {tuple(t.shape)}")
        t = t[: self.max_samples - self._n]
        if t.shape[0] == 0:
            return
        _check_finite(t, name="z")
        if self._second is None:
            self._allocate(self._device if self._device is not None else t.device)
        assert self._sum is not None and self._second is not None and self._device is not None
        for block in _row_blocks(t):
            block = block.to(self._device)
            if self._shift is None:
                self._shift = block.mean(dim=0)
            shifted = block - self._shift
            self._second.add(shifted)
            self._sum += shifted.sum(dim=0)
            if self._normalized is not None:
                unit = _normalize_rows(block)
                self._n_nonzero += unit.shape[0]
                self._normalized.add(unit)
        self._n += t.shape[0]
        self._dtype_eps = max(self._dtype_eps, _dtype_eps(t.dtype))

    def all_reduce(self) -> None:
        """Sums these statistics over the processes of the default ``torch.distributed`` group.

        Every process then holds the statistics of all processes' embeddings together: the Gram
        ZᵀZ (RankMe), the covariance and the normalised Gram are sums over samples, so `compute`
        gives, to float64 rounding, what one process that saw every batch computes — without
        gathering a single embedding. Each process calls it once, after its last `update` (a
        process may have had none); ``max_samples`` then has capped each process's rows. The
        processes' shifts differ: each first re-centres its sums on the common shift, the
        count-weighted mean of the shifts (rank-1 updates). A no-op in a single process.

        Raises:
            ValueError: if no process has any sample.
        """
        if not distributed.is_distributed():
            return
        if self._second is None:
            self._allocate(self._device if self._device is not None else distributed.collective_device())
        assert self._second is not None and self._sum is not None and self._device is not None
        shift = self._shift if self._shift is not None else self._sum.new_zeros(self.dim)
        counts = torch.tensor([self._n, self._n_nonzero], dtype=torch.float64, device=self._device)
        header = distributed.all_reduce_(torch.cat([counts, self._n * shift]))
        total = int(header[0].item())
        if total == 0:
            raise ValueError("EmbeddingStats.all_reduce: no process has any sample")
        common = header[2:] / total
        offset = shift - common
        # Σ(z − c₀)(z − c₀)ᵀ = S + s dᵀ + d sᵀ + n d dᵀ and Σ(z − c₀) = s + n d, with d = c − c₀.
        self._second.upper().addr_(offset, self._sum).addr_(self._sum, offset).addr_(offset, offset, alpha=self._n)
        self._sum.add_(offset, alpha=self._n)
        distributed.all_reduce_(self._second.upper())
        distributed.all_reduce_(self._sum)
        if self._normalized is not None:
            distributed.all_reduce_(self._normalized.upper())
        eps = torch.tensor([self._dtype_eps], dtype=torch.float64, device=self._device)
        distributed.all_reduce_(eps, op="max")
        self._n, self._n_nonzero = total, int(header[1].item())
        self._shift = common
        self._dtype_eps = float(eps.item())

    def singular_values(self) -> torch.Tensor:
        """Singular values of the accumulated raw embeddings (float64, descending, the min(N, K)
        largest, on CPU), as the square roots of the Gram's eigenvalues: resolved down to
        ~1e-7·σ_max (see the class docstring), enough for a spectrum plot."""
        if self._n == 0:
            raise ValueError("EmbeddingStats.singular_values called before any update")
        lam = torch.linalg.eigvalsh(self._raw_gram(), UPLO="U").clamp(min=0.0)
        return torch.sort(lam, descending=True).values[: min(self._n, self.dim)].sqrt().cpu()

    def _raw_gram(self) -> torch.Tensor:
        """ZᵀZ = S + c sᵀ + s cᵀ + N c cᵀ, valid in its upper triangle (rank-1 updates in place)."""
        assert self._second is not None and self._sum is not None and self._shift is not None
        c, s = self._shift, self._sum
        g = self._second.upper().clone()
        g.addr_(c, s).addr_(s, c).addr_(c, c, alpha=float(self._n))
        return g

    def _covariance(self) -> torch.Tensor:
        """(S − s sᵀ/N)/(N − 1), valid in its upper triangle."""
        assert self._second is not None and self._sum is not None
        s = self._sum
        g = self._second.upper().clone()
        g.addr_(s, s, alpha=-1.0 / self._n)
        return g.div_(self._n - 1)

    def compute(
        self,
        names: Sequence[str] = ("rankme",),
        *,
        eps: float = 1e-7,
        rank_range: tuple[int, int] = (10, 100),
    ) -> dict[str, float]:
        """Computes metrics from the accumulated statistics.

        Args:
            names: Any of ``"rankme"``, ``"classical_rank"``, ``"alpha_req"``, ``"nesum"``,
                ``"stable_rank"``, ``"self_clustering"``.
            eps: ε of RankMe.
            rank_range: Rank range of the α-ReQ fit.

        Returns:
            A dict keyed by metric name, in the order asked; ``"alpha_req"`` yields both
            ``"alpha_req"`` and ``"alpha_req_r2"``. Values follow the direct functions'
            conventions (e.g. RankMe 1.0 for all-zero embeddings, α-ReQ NaN when unfittable).

        Raises:
            ValueError: for an unknown name, ``"lidar"``, ``"self_clustering"`` when not
                tracked, no samples yet, or fewer than 2 samples for covariance metrics.
        """
        names = _check_names(names)
        if self._n == 0:
            raise ValueError("EmbeddingStats.compute called before any update")
        if "self_clustering" in names and self._normalized is None:
            raise ValueError("self_clustering was not tracked: pass metrics=None or include it")
        n, k = self._n, self.dim
        small = min(n, k)
        out: dict[str, float] = {}
        raw_eig: torch.Tensor | None = None
        cov_eig: torch.Tensor | None = None
        for name in names:
            if name in ("rankme", "classical_rank", "stable_rank") and raw_eig is None:
                lam = torch.linalg.eigvalsh(self._raw_gram(), UPLO="U").clamp(min=0.0)
                raw_eig = torch.sort(lam, descending=True).values[:small].cpu()
            if name in ("alpha_req", "nesum") and cov_eig is None:
                if n < 2:
                    raise ValueError(f"{name} needs a covariance: at least 2 samples, got {n}")
                lam = torch.linalg.eigvalsh(self._covariance(), UPLO="U").clamp(min=0.0)
                cov_eig = torch.sort(lam, descending=True).values[:small].cpu()
            if name == "rankme":
                assert raw_eig is not None
                out["rankme"] = _entropy_effective_rank(raw_eig.sqrt(), eps=eps)
            elif name == "classical_rank":
                assert raw_eig is not None
                s = raw_eig.sqrt()
                # The Gram resolves σ only down to ~sqrt(K·eps64)·σ_max: never count below it.
                dtype_eps = max(self._dtype_eps, math.sqrt(k * _EPS64) / max(n, k))
                out["classical_rank"] = float(_classical_rank_from_singular_values(s, n=n, k=k, dtype_eps=dtype_eps))
            elif name == "stable_rank":
                assert raw_eig is not None
                out["stable_rank"] = _stable_rank_from_squares(float(raw_eig.sum()), float(raw_eig[0]))
            elif name == "alpha_req":
                assert cov_eig is not None
                top = float(cov_eig[0])
                rel = max((max(n, k) * self._dtype_eps) ** 2, k * _EPS64)
                fit = _alpha_req_from_eigenvalues(cov_eig, rank_range=_check_rank_range(rank_range), floor=top * rel)
                out["alpha_req"] = fit.alpha
                out["alpha_req_r2"] = fit.r2
            elif name == "nesum":
                assert cov_eig is not None
                out["nesum"] = _nesum_from_eigenvalues(cov_eig)
            elif name == "self_clustering":
                assert self._normalized is not None
                sq_sum = self._normalized.sq_sum()
                out["self_clustering"] = _self_clustering_from_sum(sq_sum, n=self._n_nonzero, k=k)
        return out
