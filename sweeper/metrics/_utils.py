"""Private numerical helpers shared by the metrics.

Everything here works in float64 on the input's device. The expensive kernel is the Gram matrix
``AᵀA`` of a tall matrix ``A`` (n × k, n ≥ k), accumulated over row blocks so that a float32
input is never copied to float64 as a whole, and only (block) one triangle of it is computed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from sweeper import distributed

ArrayLike = torch.Tensor | np.ndarray

_F64 = torch.float64
_EPS64 = float(torch.finfo(_F64).eps)

# Elements (not bytes) of one float64 row block: 2**23 * 8 B = 64 MiB.
_BLOCK_ELEMENTS = 2**23

# Gram path: eigenvalues λ ≥ _TAIL_RATIO · λ_max of the current Gram are accepted; the others
# are re-resolved from the matrix itself in the subspace of their eigenvectors (see
# `_gram_singular_values`). 1e-10 in λ is 1e-5 in σ.
_TAIL_RATIO = 1e-10
_MAX_LEVELS = 6

# A float32 input's Gram is first tried with float32 products summed in float64 (half the cost
# of float64 products) and kept when the rounding it adds is estimated to move RankMe by at most
# _F32_BUDGET (relative), 50× under the 1e-6 we promise; see `_float32_gram_singular_values`.
_F32_BUDGET = 2e-8
_F32_PROBE_COLUMNS = 128

# Use the Gram path when max(N, K) ≥ _GRAM_ASPECT · min(N, K); otherwise a float64 SVD.
_GRAM_ASPECT = 2.0


def _to_tensor(x: ArrayLike, *, name: str = "z") -> torch.Tensor:
    """Converts a tensor or an ndarray to a detached floating tensor (no copy when possible).

    Integer and boolean inputs become float64. Complex inputs are rejected.
    """
    if isinstance(x, np.ndarray):
        if np.iscomplexobj(x):
            raise TypeError(f"{name} must be real, got a complex array")
        if any(stride < 0 for stride in x.strides) or not x.dtype.isnative:
            x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))  # torch needs these
        if not x.flags.writeable:
            # torch.from_numpy warns on read-only arrays (np.load(mmap_mode="r")); we never write.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                t = torch.from_numpy(x)
        else:
            t = torch.from_numpy(x)
    elif isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        raise TypeError(f"{name} must be a torch.Tensor or a numpy.ndarray, got {type(x).__name__}")
    if t.is_complex():
        raise TypeError(f"{name} must be real, got dtype {t.dtype}")
    if t.device.type == "mps":  # no float64 on Apple GPUs: compute on the CPU
        t = t.cpu()
    if not t.is_floating_point():
        t = t.to(_F64)
    return t


def _float64_device(device: torch.device) -> torch.device:
    """The device that can hold float64 accumulators for data on ``device``."""
    return torch.device("cpu") if device.type == "mps" else device


def _dtype_eps(dtype: torch.dtype) -> float:
    """Machine epsilon of a floating dtype (float64's for non-floating dtypes)."""
    if dtype.is_floating_point:
        return float(torch.finfo(dtype).eps)
    return _EPS64


def _row_block_size(k: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(k, 1))


def _check_finite(t: torch.Tensor, *, name: str = "z") -> None:
    """Raises ValueError if ``t`` holds NaN or ±inf.

    Fast path: IEEE arithmetic propagates NaN and ±inf through a sum, so a finite sum proves
    every entry finite (one memory-bound pass, no mask). Only when the sum is not finite (a
    non-finite entry, or an overflow of the sum) are the entries checked by blocks.
    """
    if t.numel() == 0 or bool(torch.isfinite(t.sum())):
        return
    flat = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(1, -1)
    step = _row_block_size(flat.shape[1])
    for start in range(0, flat.shape[0], step):
        if not bool(torch.isfinite(flat[start : start + step]).all()):
            raise ValueError(
                f"{name} contains non-finite values (NaN or inf); the embeddings of a diverged model have no rank"
            )


def _as_shard(z: ArrayLike, *, name: str = "z") -> torch.Tensor:
    """Validates one process's row shard of an (N, K) matrix: 2-D, K ≥ 1, finite; this shard
    may be empty (another process's may not: the metrics check the total)."""
    t = _to_tensor(z, name=name)
    if t.dim() != 2 or t.shape[1] == 0:
        raise ValueError(f"{name} must be 2-D (rows × K dimensions, K ≥ 1), got shape {tuple(t.shape)}")
    _check_finite(t, name=name)
    return t


def _as_matrix(z: ArrayLike, *, name: str = "z", max_samples: int | None = None) -> torch.Tensor:
    """Validates an (N, K) embedding matrix: 2-D, non-empty, finite; keeps its first rows."""
    if max_samples is not None and (isinstance(max_samples, bool) or max_samples < 1):
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}")
    if isinstance(z, np.ndarray) and max_samples is not None:
        z = z[:max_samples]  # slice before converting: a view, so memory-mapped files stay lazy
    t = _to_tensor(z, name=name)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N samples × K dimensions), got shape {tuple(t.shape)}")
    if max_samples is not None:
        t = t[:max_samples]
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    _check_finite(t, name=name)
    return t


def _row_blocks(
    z: torch.Tensor,
    *,
    shift: torch.Tensor | None = None,
    transpose: bool = False,
    dtype: torch.dtype = _F64,
) -> Iterator[torch.Tensor]:
    """Yields contiguous ``dtype`` row blocks of ``A = z − shift`` (or of ``Aᵀ`` if transpose)."""
    if transpose:
        n = z.shape[1]
        step = _row_block_size(z.shape[0])
        for start in range(0, n, step):
            block = z[:, start : start + step].to(dtype)
            if shift is not None:
                block = block - shift[start : start + step]
            yield block.T.contiguous()
    else:
        n = z.shape[0]
        step = _row_block_size(z.shape[1])
        for start in range(0, n, step):
            block = z[start : start + step].to(dtype)
            if shift is not None:
                block = block - shift
            yield block.contiguous()


class _SymAccumulator:
    """Accumulates the float64 Gram ``Σ_blocks xᵀx`` of row blocks ``x`` (rows × k).

    Only the block upper triangle is formed: the k columns are cut into up to 8 panels of at
    least 256 columns and panel i is multiplied with panels i..end, so a large Gram costs
    ~(1/2 + 1/16) of a full ``xᵀ @ x`` while every product stays a large GEMM. Pure torch
    (torch's own BLAS): mixing in a second BLAS runtime (SciPy's OpenBLAS threads next to
    torch's OpenMP threads) was up to 50× slower on a busy 2-core machine. `upper` returns the
    matrix valid in its upper triangle.
    """

    def __init__(self, k: int, device: torch.device) -> None:
        self.k = k
        panels = max(1, min(8, k // 256))
        self._edges = [k * i // panels for i in range(panels + 1)]
        self._g = torch.zeros(k, k, dtype=_F64, device=device)

    def add(self, x: torch.Tensor) -> None:
        """Adds ``xᵀx``: float64 products, or float32 products summed into float64 when ``x`` is
        float32 (see `_gram`)."""
        if x.shape[0] == 0:
            return
        if x.dtype != torch.float32:
            x = x.to(_F64)
        edges = self._edges
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            if x.dtype == _F64:
                self._g[lo:hi, lo:].addmm_(x[:, lo:hi].T, x[:, lo:])
            else:
                self._g[lo:hi, lo:] += x[:, lo:hi].T @ x[:, lo:]

    def upper(self) -> torch.Tensor:
        """The accumulated Gram, valid in its upper triangle (diagonal included) only.

        The lower triangle holds partial sums: decompose with ``UPLO="U"``. No copy (for
        K = 8192 a full symmetric copy would be another 512 MiB).
        """
        return self._g

    def sq_sum(self) -> float:
        """``‖G‖_F²`` of the full symmetric Gram, read from its upper triangle by panels."""
        total = 0.0
        step = 1024
        for lo in range(0, self.k, step):
            panel = self._g[lo : lo + step, lo:]
            off = torch.triu(panel, diagonal=1)
            total += 2.0 * float(off.square().sum()) + float(panel.diagonal().square().sum())
        return total


class _Processes:
    """The collectives of a metric computed over the row shards of several processes (the
    default ``torch.distributed`` group): sums of Grams, and rank 0's word on every decision
    and on every basis, so that all processes take the same branches (and so run the same
    collectives) even where their floating-point results differ in the last bits."""

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_(tensor)

    def rows(self, local: int, device: torch.device) -> int:
        return int(distributed.all_reduce_(torch.tensor([local], dtype=torch.long, device=device)).item())

    def agree(self, flag: bool, device: torch.device) -> bool:
        return bool(distributed.broadcast_(torch.tensor([int(flag)], dtype=torch.long, device=device)).item())

    def same(self, tensor: torch.Tensor) -> torch.Tensor:
        return distributed.broadcast_(tensor.contiguous())


def _agree(processes: _Processes | None, flag: bool, device: torch.device) -> bool:
    return flag if processes is None else processes.agree(flag, device)


def _gram(
    z: torch.Tensor,
    *,
    shift: torch.Tensor | None = None,
    transpose: bool = False,
    basis: torch.Tensor | None = None,
    products: torch.dtype = _F64,
    processes: _Processes | None = None,
) -> torch.Tensor:
    """Float64 Gram ``BᵀB`` with ``B = A @ basis``, ``A = z − shift`` (or ``Aᵀ``).

    Valid in the upper triangle only (see `_SymAccumulator.upper`). With ``products=float32``
    (only for a float32 ``z`` with no shift and no basis) each row block's Gram is a float32
    matmul — exact products, sums rounded over ≤ 2²³/K rows — accumulated in float64. With
    ``processes``, ``z`` is this process's row shard and the Gram is summed over the processes
    (a Gram ``AᵀA`` is a sum over rows: ``transpose`` must be False).
    """
    k = z.shape[0] if transpose else z.shape[1]
    m = k if basis is None else basis.shape[1]
    acc = _SymAccumulator(m, z.device)
    dtype = torch.float32 if products == torch.float32 and basis is None and shift is None else _F64
    for block in _row_blocks(z, shift=shift, transpose=transpose, dtype=dtype):
        acc.add(block if basis is None else block @ basis)
    return acc.upper() if processes is None else processes.sum_(acc.upper())


def _low_precision(z: torch.Tensor) -> bool:
    """Whether the first Gram of ``z`` may use float32 products: a float32 input on the CPU, or on
    CUDA only while float32 matmuls are true float32 (TF32 would keep 10 mantissa bits)."""
    if z.dtype != torch.float32:
        return False
    if z.device.type == "cuda":
        return torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32
    return z.device.type == "cpu"


def _float32_gram_singular_values(
    z: torch.Tensor, *, transpose: bool, processes: _Processes | None = None
) -> torch.Tensor | None:
    """Singular values of a float32 ``z`` from a Gram of float32 products, or None when the
    rounding of those products could matter (the caller then takes the float64 path).

    The rounding is measured, not bounded: the exact float64 Gram of 128 columns (of the tall
    orientation, chosen by a fixed seed) is compared with the same entries of the float32 Gram,
    giving the rms entry error ρ. To first order an eigenvalue moves by vᵢᵀEvᵢ ~ ρ, so σᵢ by
    ρ/(2λᵢ) relative and log RankMe by Σᵢ |log pᵢ + H|·pᵢ·ρ/(2λᵢ) (independent signs: the root
    of the sum of squares). The result is kept when that estimate is ≤ 2e-8 and every λᵢ ≥ 1e3·ρ
    (where first order holds). On power-law spectra σᵢ ∝ i^-a, a ≤ 1, and flat ones (kept) the
    actual error was within 4× of the estimate; steeper or rank-deficient spectra fail the test.
    With ``processes`` (row shards), the float32 Gram and the probe's exact Gram are each summed
    over the processes, so ρ measures the rounding of the summed Gram.
    """
    tall = z.T if transpose else z
    m = tall.shape[1]
    g = _gram(z, transpose=transpose, products=torch.float32, processes=processes)
    # float32 products overflow when |z| ≳ 1e19
    if not _agree(processes, math.isfinite(float(g.sum())), z.device):
        return None
    lam = torch.linalg.eigvalsh(g, UPLO="U")
    if not _agree(processes, float(lam[-1]) > 0.0, z.device):
        return None
    generator = torch.Generator().manual_seed(0)
    probe = torch.randperm(m, generator=generator)[: min(_F32_PROBE_COLUMNS, m)].sort().values.to(z.device)
    columns = tall[:, probe].to(_F64)
    exact = columns.T @ columns
    if processes is not None:
        processes.sum_(exact)
    error = (g[probe][:, probe] - exact).triu()  # sorted probe: g's upper triangle maps to triu
    count = probe.numel() * (probe.numel() + 1) / 2
    rho = math.sqrt(float(error.square().sum()) / count)
    if not _agree(processes, float(lam[0]) >= 1e3 * rho, z.device):
        return None
    sigma = lam.clamp(min=0.0).sqrt()
    p = sigma / sigma.sum()
    log_p = torch.log(p)
    entropy = -float((p * log_p).sum())
    estimate = float(((log_p + entropy).abs() * p * rho / (2.0 * lam)).square().sum().sqrt())
    return _desc(sigma) if _agree(processes, estimate <= _F32_BUDGET, z.device) else None


def _desc(x: torch.Tensor) -> torch.Tensor:
    return torch.sort(x, descending=True).values


def _gram_singular_values(
    z: torch.Tensor,
    *,
    shift: torch.Tensor | None = None,
    for_rankme: bool = False,
    processes: _Processes | None = None,
) -> torch.Tensor:
    """Singular values of ``A = z − shift`` (float64, descending, min(N, K) of them) via Grams.

    σ² are the eigenvalues of the Gram of the tall orientation of A (``AᵀA`` if N ≥ K, else
    ``AAᵀ``). Eigenvalues of a float64 Gram carry an absolute error ~ eps64·λ_max, so σ below
    ~1e-8·σ_max come out as noise, and σ near 1e-5·σ_max keep only ~6 digits. Hence a
    deflation: eigenvalues with λ ≥ 1e-10·λ_max (σ ≥ 1e-5·σ_max) are accepted — relative error
    of σ ≲ eps64/(2·1e-10) ≈ 1e-6 at the boundary, far less above, and these σ weigh at most
    1e-5 in RankMe's p — and for the others we take their eigenvectors V_t, form the Gram of
    ``A V_t`` *from A itself* (its entries are of the size of the small σ², not of λ_max) and
    repeat. The coupling between accepted and deferred directions is O(eps64·λ_max), which
    moves the deferred σ² only by O((eps64·λ_max)² / (1e-10·λ_max)), i.e. σ by ~1e-11·σ_max.
    Each level shrinks the scale by 1e-5; the loop stops once the remaining σ are at the
    rounding level of A itself (~eps64·sqrt(K)·σ_max), where a float64 SVD is no more
    accurate. Measured against float64 SVD on 4096 × 1024 float32 matrices (power laws up to
    σ_i ∝ i^-5, exponential decay, exact rank 30): RankMe differs by ≤ 2e-10 relative; a plain
    Gram without deflation by up to 3e-5. Full-rank embeddings with σ_min ≥ 1e-5·σ_max (the
    common case) never deflate.

    With ``processes``, ``z`` is this process's row shard: every Gram is the K × K ``AᵀA``
    summed over the processes (whatever N), each deflation basis is rank 0's, and the top
    min(N, K) values (N = all rows) are returned.
    """
    n, k = z.shape
    device = z.device
    if processes is not None:
        n = processes.rows(n, device)
    transpose = n < k and processes is None
    small = min(n, k)
    if for_rankme and shift is None and _low_precision(z):
        fast = _float32_gram_singular_values(z, transpose=transpose, processes=processes)
        if fast is not None:
            return fast[:small]
    g = _gram(z, shift=shift, transpose=transpose, products=_F64, processes=processes)
    lam = torch.linalg.eigvalsh(g, UPLO="U")
    lam_max = float(lam[-1])
    if not _agree(processes, lam_max > 0.0, device):
        return torch.zeros(small, dtype=_F64, device=device)
    if _agree(processes, float(lam[0]) >= _TAIL_RATIO * lam_max, device):
        return _desc(lam.clamp(min=0.0).sqrt())[:small]
    # Noise level of the entries of A itself (rounding of the float64 shift/projection).
    sigma_floor = 16.0 * _EPS64 * math.sqrt(max(n, k)) * math.sqrt(lam_max)
    accepted: list[torch.Tensor] = []
    basis: torch.Tensor | None = None
    for level in range(_MAX_LEVELS):
        if level > 0:
            g = _gram(z, shift=shift, transpose=transpose, basis=basis, processes=processes)
        lam, vec = torch.linalg.eigh(g, UPLO="U")
        level_max = float(lam[-1])
        if _agree(processes, level_max <= sigma_floor**2 or level == _MAX_LEVELS - 1, device):
            accepted.append(lam.clamp(min=0.0).sqrt())
            break
        head = lam >= _TAIL_RATIO * level_max
        if processes is not None:
            head = processes.same(head.to(torch.uint8)).bool()
        accepted.append(lam[head].clamp(min=0.0).sqrt())
        tail = vec[:, ~head]
        if tail.shape[1] == 0:
            break
        if processes is not None:
            tail = processes.same(tail)
        basis = tail if basis is None else basis @ tail
    return _desc(torch.cat(accepted))[:small]


def _singular_values_f64(
    z: torch.Tensor,
    *,
    shift: torch.Tensor | None = None,
    for_rankme: bool = False,
    processes: _Processes | None = None,
) -> torch.Tensor:
    """Singular values of ``z − shift`` in float64 (descending, on z's device, min(N, K) of them).

    Gram path (see `_gram_singular_values`) when the matrix is at least twice as long as it is
    wide (either way round), and always for row shards (``processes``); a float64 ``svdvals``
    for near-square matrices, where the Gram saves least and its deflation could cost as much
    as the SVD.
    """
    n, k = z.shape
    if processes is not None or max(n, k) >= _GRAM_ASPECT * min(n, k):
        return _gram_singular_values(z, shift=shift, for_rankme=for_rankme, processes=processes)
    a = z.to(_F64)
    if shift is not None:
        a = a - shift
    return torch.linalg.svdvals(a)


def _column_mean_f64(z: torch.Tensor) -> torch.Tensor:
    """Float64 column means, by row blocks."""
    total = torch.zeros(z.shape[1], dtype=_F64, device=z.device)
    for block in _row_blocks(z):
        total += block.sum(dim=0)
    return total / z.shape[0]


def _covariance_eigenvalues(z: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the sample covariance ``(Z − μ)ᵀ(Z − μ)/(N − 1)`` (float64, descending).

    Returns min(N, K) values (the others are exactly zero). Needs N ≥ 2.
    """
    n = z.shape[0]
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got N = {n}")
    s = _singular_values_f64(z, shift=_column_mean_f64(z))
    return s.square() / (n - 1)


def _entropy_effective_rank(values: torch.Tensor, *, eps: float) -> float:
    """``exp(−Σ p log p)`` with ``p = v / Σv + eps`` (RankMe and LiDAR); 1.0 if ``Σv = 0``."""
    v = values.to(_F64)
    total = float(v.sum())
    if total <= 0.0:
        return 1.0
    p = v / total + eps
    return float(torch.exp(-torch.xlogy(p, p).sum()))
