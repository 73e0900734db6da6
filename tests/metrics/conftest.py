"""Keeps numpy's reference computations single-threaded.

The tests compare our torch code with independent numpy (OpenBLAS) computations. On a small
machine, OpenBLAS worker threads competing with torch's OpenMP threads made a 2048 × 128 numpy
SVD up to 50× slower; the reference matrices are small, one thread is plenty.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _single_threaded_numpy_blas() -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
