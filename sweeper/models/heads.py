"""Heads built from ``model.projector`` on lightly's ``ProjectionHead`` and ``DINOProjectionHead``."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from lightly.models.modules.heads import DINOProjectionHead, ProjectionHead
from torch import nn

__all__ = ["build_projector", "build_prototype_head", "prototype_weights"]


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


class _UnnormalizedPrototypeHead(DINOProjectionHead):
    """DINO's head without the ℓ2 normalisation of the bottleneck (the CARP authors' ``CARPHead``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.layers(x))


def build_prototype_head(
    input_dim: int,
    projector: Sequence[int],
    num_prototypes: int,
    *,
    batch_norm: bool,
    l2_bottleneck: bool = True,
    freeze_last_layer: int = 0,
) -> DINOProjectionHead:
    """A prototype head (DINO, Caron et al. 2021; CARP, Silva & Ramírez Rivera 2023, App. C.1).

    An MLP shaped by ``projector`` (hidden..., bottleneck; both papers: 2048-2048-256) with
    Linear(-BN)-GELU hidden layers, then (if ``l2_bottleneck``, as DINO) ℓ2 normalisation, then a
    bias-free weight-normalised linear layer (norm fixed to 1) to ``num_prototypes``. Weights are
    truncated-normal (std 0.02) as in DINO. DINO: ``batch_norm`` = its ``head_batch_norm``; CARP:
    ``batch_norm=True, l2_bottleneck=False``. ``freeze_last_layer``: epochs during which
    ``cancel_last_layer_gradients`` drops the prototype layer's gradients.
    """
    head_class = DINOProjectionHead if l2_bottleneck else _UnnormalizedPrototypeHead
    with warnings.catch_warnings():  # lightly builds the last layer with the deprecated weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        head = head_class(
            input_dim=input_dim,
            hidden_dim=projector[0],
            bottleneck_dim=projector[-1],
            output_dim=num_prototypes,
            # lightly's own 3-layer MLP is replaced just below, but building it draws from the
            # RNG, and how much depends on this flag: CARP's head has always been built with
            # lightly's default (False), so its seeded initialisation is kept as it was.
            batch_norm=batch_norm and l2_bottleneck,
            freeze_last_layer=freeze_last_layer,
            norm_last_layer=True,
        )
    head.layers = build_projector(input_dim, projector, batch_norm=batch_norm, activation=nn.GELU).layers
    head.layers.apply(head._init_weights)
    return head


def prototype_weights(last_layer: nn.Module) -> torch.Tensor:
    """The (K, bottleneck) weights of a ``weight_norm``-ed linear layer: g · v / ‖v‖ per row."""
    v, g = last_layer.weight_v, last_layer.weight_g
    return g * v / v.norm(dim=1, keepdim=True)
