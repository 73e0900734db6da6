"""What every SSL method provides to the engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from sweeper.hyperparams import MethodParams
from sweeper.models import Backbone

__all__ = ["SSLMethod"]


class SSLMethod(nn.Module):
    """A joint-embedding method: backbone, heads and loss — the public base of every method,
    built-in or plugin.

    Subclasses declare their hyperparameters as ``hyperparameters``, a pydantic model
    (:class:`sweeper.MethodParams`) with the papers' defaults, take exactly its fields as
    keyword arguments of ``__init__(self, backbone, *, projector, **hyperparameters)``
    (``backbone``: a :class:`~sweeper.models.Backbone`, its ``module`` giving (B, D) and ``dim``
    = D; ``projector``: ``model.projector``, the head's sizes), build their heads there and
    implement :meth:`training_loss`; ``sweeper.testing.check_method`` checks the contract.
    The engine calls, per step: :meth:`training_loss`, ``backward``,
    :meth:`before_optimizer_step`, the optimiser step, :meth:`after_step`. :meth:`embed` gives
    the two tensors RankMe reads: the backbone ``representation`` and the ``embedding`` (the
    projector output, or for clustering heads the layer before the prototypes). Clustering
    methods also override :meth:`prototypes`.

    ``num_views`` views come per batch. Methods with multi-crop (DINO, SwAV) set it and
    ``num_local_views`` on the instance: the first ``num_views - num_local_views`` are global
    views, the last ``num_local_views`` small local crops (seen by the student only).
    """

    name: ClassVar[str] = ""  # the registry name of a built-in (a plugin's is where it is registered)
    hyperparameters: ClassVar[type[MethodParams]]
    num_views: int = 2
    num_local_views: int = 0

    def __init__(self, backbone: Backbone, projector: nn.Module, *, embedding_dim: int) -> None:
        super().__init__()
        self.backbone = backbone.module
        self.projector = projector
        self.representation_dim = backbone.dim
        self.embedding_dim = embedding_dim

    def training_loss(self, views: Sequence[torch.Tensor], *, progress: float) -> torch.Tensor:
        """The loss of one batch given its augmented views, each (B, C, H, W).

        ``progress`` is the fraction of training done, in [0, 1), for scheduled values
        (temperatures, EMA momenta); methods without schedules ignore it.
        """
        raise NotImplementedError

    def before_optimizer_step(self, *, progress: float, epoch: int) -> None:
        """Hook between ``loss.backward()`` and ``optimizer.step()``; a no-op by default.

        For gradient surgery that the papers define in epochs: SwAV freezes its prototypes and
        DINO its last layer during the first epoch(s) by dropping their gradients here.
        ``epoch`` is the 0-based index of the epoch being trained.
        """

    def after_step(self, *, progress: float) -> None:
        """Hook after each optimiser step (EMA teacher updates); a no-op by default."""

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(representation (B, D), embedding (B, K)) of clean images, for RankMe and probes."""
        representation = self.backbone(images)
        return representation, self.projector(representation)

    def prototypes(self) -> torch.Tensor | None:
        """Prototype weights (P, K) of clustering methods, else None."""
        return None
