"""Forward passes over several views, batching the views that share a resolution.

As the DINO/SwAV ``MultiCropWrapper``: consecutive views of the same size go through the
network as one batch (so BatchNorm sees both global views together, as in those codes), and
the outputs are split back per view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["forward_views"]


def forward_views(network: Callable[[torch.Tensor], torch.Tensor], views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``[network(view) for view in views]``, computed one resolution group at a time."""
    outputs: list[torch.Tensor] = []
    start = 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[1:] == views[start].shape[1:]:
            end += 1
        group = views[start:end]
        out = network(torch.cat(list(group)) if len(group) > 1 else group[0])
        outputs.extend(out.split([len(view) for view in group]))
        start = end
    return outputs
