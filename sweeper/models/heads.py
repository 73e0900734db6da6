"""Projector heads built from ``model.projector`` with lightly's ``ProjectionHead``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lightly.models.modules.heads import ProjectionHead
from torch import nn

__all__ = ["build_projector"]


def build_projector(
    input_dim: int,
    dims: Sequence[int],
    *,
    last_batch_norm: bool = False,
    batch_norm: bool = True,
    activation: Callable[[], nn.Module] = lambda: nn.ReLU(inplace=True),
) -> ProjectionHead:
    """MLP ``input_dim -> dims[0] -> ... -> dims[-1]``: Linear-BN-ReLU hidden layers, linear output.

    ``dims`` is ``model.projector`` (hidden sizes..., output size). ``last_batch_norm`` adds an
    affine-free BatchNorm on the output, as Barlow Twins-style heads do. ``batch_norm=False``
    drops the hidden BatchNorms (their Linear layers then get a bias) and ``activation`` swaps the
    ReLU, e.g. for DINO's BN-free GELU MLP.
    """
    if not dims:
        raise ValueError("the projector needs at least its output dimension")
    sizes = [input_dim, *dims]
    blocks: list[tuple[int, int, nn.Module | None, nn.Module | None]] = [
        (sizes[i], sizes[i + 1], nn.BatchNorm1d(sizes[i + 1]) if batch_norm else None, activation())
        for i in range(len(dims) - 1)
    ]
    last_norm = nn.BatchNorm1d(sizes[-1], affine=False) if last_batch_norm else None
    blocks.append((sizes[-2], sizes[-1], last_norm, None))
    return ProjectionHead(blocks)
