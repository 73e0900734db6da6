"""Label-free metrics of an embedding matrix saved in a file (``sweeper rankme FILE``).

:func:`load_embeddings` reads an ``(N, K)`` matrix from a ``.npy`` or ``.pt`` file and refuses,
with one line naming the file and the fix, anything that is not a clean 2-D real matrix of at
least two rows: an empty or unreadable file, a pickle (never unpickled), a ``.pt`` holding a
dict, list or object, a complex, object or string dtype, NaN/inf values, a matrix too large for
this machine's memory. :func:`embedding_metrics` then computes RankMe and its peers with the
direct functions of :mod:`sweeper.metrics`, whose work is bounded by ``min(N, K)`` (a wide
``(2, 60000)`` matrix costs a 2×2 Gram, not a 60000×60000 one).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from sweeper.errors import ConfigError
from sweeper.metrics import alpha_req, classical_rank, nesum, rankme, self_clustering, stable_rank

__all__ = ["embedding_metrics", "load_embeddings"]

_SUFFIXES = (".npy", ".pt", ".pth")
# The float64 working copy and the min(N, K)² Gram must fit in this share of physical memory.
_MEMORY_SHARE = 0.5


def load_embeddings(path: Path) -> torch.Tensor:
    """The ``(N, K)`` embedding matrix in ``path`` (``.npy``, ``.pt`` or ``.pth``; any case).

    Raises:
        ConfigError: naming the file and what is wrong with it, before any large allocation.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: no such file: check the path")
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ConfigError(
            f"{path}: unknown file type {path.suffix!r}: save the matrix with numpy.save (.npy) or torch.save (.pt)"
        )
    if path.stat().st_size == 0:
        raise ConfigError(f"{path}: the file is empty: save an (N, K) matrix into it")
    matrix = _load_npy(path) if suffix == ".npy" else _load_torch(path)
    _check_matrix(path, matrix)
    return matrix


def embedding_metrics(z: torch.Tensor) -> dict[str, float]:
    """RankMe and its peers of a checked ``(N, K)`` matrix (see :mod:`sweeper.metrics`)."""
    fit = alpha_req(z)
    return {
        "rankme": rankme(z, max_samples=None),
        "classical_rank": float(classical_rank(z)),
        "alpha_req": fit.alpha,
        "alpha_req_r2": fit.r2,
        "nesum": nesum(z),
        "stable_rank": stable_rank(z),
        "self_clustering": self_clustering(z),
    }


def _load_npy(path: Path) -> torch.Tensor:
    try:
        # Memory-mapped: the header (shape, dtype) is checked before any data is read.
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:  # an object array needs pickle, which is never allowed
        raise ConfigError(f"{path}: not a plain numeric .npy array ({_first_line(exc)}): save a float matrix") from None
    except (OSError, EOFError) as exc:
        raise ConfigError(f"{path}: not a readable .npy file ({_first_line(exc)}): save it with numpy.save") from None
    if not isinstance(array, np.ndarray):
        raise ConfigError(f"{path}: holds several arrays (.npz): save one (N, K) matrix with numpy.save")
    if array.dtype.kind not in "fiub":
        raise ConfigError(f"{path}: dtype {array.dtype} is not real numbers: save a float matrix")
    _check_shape(path, tuple(array.shape))
    _check_fits(path, tuple(array.shape))
    # A writable in-memory copy (the size was checked above); integers and booleans as float64.
    return torch.from_numpy(np.array(array, dtype=array.dtype if array.dtype.kind == "f" else np.float64))


def _load_torch(path: Path) -> torch.Tensor:
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{path}: not a torch.save file: save the tensor with torch.save")
    try:
        value = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # weights_only refuses arbitrary objects; torch raises several types
        raise ConfigError(
            f"{path}: cannot be read as a tensor ({_first_line(exc)}): torch.save one (N, K) tensor"
        ) from None
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"{path}: holds a {type(value).__name__}, not a tensor: torch.save one (N, K) tensor")
    if value.is_complex() or not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64, torch.bool)):
        raise ConfigError(f"{path}: dtype {value.dtype} is not real numbers: save a float tensor")
    _check_shape(path, tuple(value.shape))
    _check_fits(path, tuple(value.shape))
    return value


def _check_shape(path: Path, shape: tuple[int, ...]) -> None:
    if len(shape) != 2:
        raise ConfigError(f"{path}: expected an (N, K) matrix, got shape {shape}: reshape it to (samples, dims)")
    if shape[0] < 2 or shape[1] < 1:
        raise ConfigError(f"{path}: shape {shape} has too few rows or columns: RankMe needs N >= 2 samples and K >= 1")


def _check_fits(path: Path, shape: tuple[int, ...]) -> None:
    n, k = shape
    needed = 8 * (n * k + min(n, k) ** 2)  # the float64 copy and the Gram of the smaller side
    available = _physical_memory() * _MEMORY_SHARE
    if needed > available:
        raise ConfigError(
            f"{path}: a {n} x {k} matrix needs about {needed / 2**30:.1f} GiB in float64, more than "
            f"{available / 2**30:.1f} GiB here: use a subsample of the rows"
        )


def _check_matrix(path: Path, z: torch.Tensor) -> None:
    finite = torch.isfinite(z) if z.is_floating_point() else torch.ones((), dtype=torch.bool)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ConfigError(f"{path}: {bad} values are NaN or infinite: drop or fix those rows")


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 8 GiB
        return 8 * 2**30


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__
