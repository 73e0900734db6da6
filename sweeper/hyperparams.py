"""The hyperparameters of each SSL method: names, types, defaults and valid ranges.

One pydantic model per built-in method, each the ``hyperparameters`` of its class and listed
beside it in :data:`sweeper.registry.BUILTIN_METHODS` (the one list of method names, read
without importing torch). The config validates ``method.params`` (and search-space keys
``method.params.<name>``) against these; the method classes take exactly these fields as
keyword arguments. A plugin method declares its own model the same way, deriving from
:class:`MethodParams`. Layer 0: pydantic only.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "BYOLParams",
    "BarlowTwinsParams",
    "CARPParams",
    "DINOParams",
    "MethodParams",
    "SimCLRParams",
    "SwAVParams",
    "VICRegCtrParams",
    "VICRegExpParams",
    "VICRegParams",
]

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Momentum = Annotated[float, Field(ge=0, le=1)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class MethodParams(BaseModel):
    """The base of every method's hyperparameters: unknown names refused, defaults validated.
    A plugin's model derives from it (``sweeper.MethodParams``) with the papers' defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SimCLRParams(MethodParams):
    """SimCLR (Chen et al. 2020): NT-Xent temperature τ."""

    temperature: PositiveFloat = 0.5


class VICRegParams(MethodParams):
    """VICReg (Bardes et al. 2022): λ (invariance), μ (variance), ν (covariance) weights."""

    inv_weight: NonNegativeFloat = 25.0
    var_weight: NonNegativeFloat = 25.0
    cov_weight: NonNegativeFloat = 1.0


class VICRegExpParams(VICRegParams):
    """VICReg-exp (Garrido et al. 2022, "On the duality between contrastive and non-contrastive
    self-supervised learning"): VICReg with the covariance penalty replaced by a LogSumExp over
    the off-diagonal covariances, at temperature τ.

    λ, μ, ν keep VICReg's defaults (METHODS.md: "as VICReg"). The paper's τ was lost in the
    text copies (papers/000 App. I); τ = 0.1 is our reconstruction.
    """

    temperature: PositiveFloat = 0.1


class VICRegCtrParams(VICRegExpParams):
    """VICReg-ctr (Garrido et al. 2022): VICReg-exp applied to the transposed embeddings Zᵀ, i.e.
    sample-contrastive (SimCLR-like). τ = 0.1 is our reconstruction (value lost in the text)."""


class BarlowTwinsParams(MethodParams):
    """Barlow Twins (Zbontar et al. 2021): λ weighting the off-diagonal (redundancy-reduction)
    terms of the cross-correlation matrix; 5.1e-3 in the authors' code (≈ 5e-3 in the paper).
    λ = 0 leaves only the invariance term and collapses the embedding dimensions together."""

    lambda_offdiag: NonNegativeFloat = 5.1e-3


class BYOLParams(MethodParams):
    """BYOL (Grill et al. 2020): base EMA momentum τ_base of the target network (cosine-increased
    to 1 over training) and the hidden width of the predictor MLP. τ_base = 0 (target = online
    network) collapses in the paper; τ_base = 1 (a frozen random target) learns little (Table 5a).
    ``use_predictor = False`` removes the predictor, which collapses (Table 5b, METHODS.md)."""

    base_momentum: Momentum = 0.996
    predictor_hidden_dim: PositiveInt = 4096
    use_predictor: bool = True


class DINOParams(MethodParams):
    """DINO (Caron et al. 2021; papers/003 ch. 5).

    ``teacher_temp`` τ_t is reached by a linear warm-up from ``warmup_teacher_temp`` over the
    first ``teacher_temp_warmup`` fraction of training (the paper: 0.04 → 0.07 over 30 of 100
    epochs); ``teacher_temp_warmup = 0`` gives a constant τ_t (papers/003 Table 5.12: τ_t ≥ 0.08
    from the start collapses, loss stuck at ln K). ``center_momentum`` m of the teacher centre
    (m = 0.999 collapses, Table 5.13). ``base_momentum`` of the EMA teacher (0.996 → 1, cosine).
    ``num_prototypes`` K = 65 536 in the paper (scale it down for small data sets).
    ``freeze_last_layer_epochs``: epochs during which the last (prototype) layer gets no update.
    ``head_batch_norm``: BatchNorm in the head's hidden layers (the DINO code's ``use_bn_in_head``,
    off by default and for ViTs; convnets on small images need it for diverse initial outputs).
    ``num_local_crops``: multi-crop small views seen by the student only (paper: 10, RankMe: 6;
    0 = the two global views only); their size and area range are ``data.local_crop_size`` and
    ``data.local_crop_scale``.
    """

    num_prototypes: PositiveInt = 65536
    teacher_temp: PositiveFloat = 0.07
    warmup_teacher_temp: PositiveFloat = 0.04
    teacher_temp_warmup: Fraction = 0.3
    student_temp: PositiveFloat = 0.1
    center_momentum: Momentum = 0.9
    base_momentum: Momentum = 0.996
    freeze_last_layer_epochs: NonNegativeInt = 1
    head_batch_norm: bool = False
    num_local_crops: NonNegativeInt = 0


class SwAVParams(MethodParams):
    """SwAV (Caron et al. 2020; papers/003 ch. 4).

    Codes by Sinkhorn-Knopp (``sinkhorn_iterations`` = 3, entropic regularisation ``epsilon``
    ε = 0.05; a large ε gives uniform codes and collapses), softmax ``temperature`` τ = 0.1,
    ``num_prototypes`` K = 3000, prototypes frozen during the first ``freeze_prototypes_epochs``.
    ``queue_length``: a queue of past embeddings per global view joins the Sinkhorn batch once
    full (the paper: 3840 for batches of 256; 0 = off, the paper's batch-4096 setting), started
    after the ``queue_start`` fraction of training (epoch 15 of 100 in the paper's code).
    ``num_local_crops``: multi-crop small views (paper: 6 of 96² from area 0.05-0.14, set by
    ``data.local_crop_size``/``data.local_crop_scale``; 0 = two views only).
    """

    num_prototypes: PositiveInt = 3000
    temperature: PositiveFloat = 0.1
    epsilon: PositiveFloat = 0.05
    sinkhorn_iterations: PositiveInt = 3
    freeze_prototypes_epochs: NonNegativeInt = 1
    queue_length: NonNegativeInt = 0
    queue_start: Fraction = 0.15
    num_local_crops: NonNegativeInt = 0


class CARPParams(MethodParams):
    """CARP (Silva & Ramírez Rivera; papers/002): ``num_prototypes`` K = 65 536 split each step
    into random blocks of ``block_size`` N_B = 512 prototypes; EMA teacher with ``base_momentum``
    0.99 → 1 (cosine). N_B = K (a single block) collapses (Table B.2); small batches want a
    smaller N_B. ``entropy_weight`` λ_e scales the uniform-assignment term (eq. 3; 1 in eq. 4):
    λ_e = 0 optimises consistency alone, which collapses to one prototype (§3)."""

    num_prototypes: PositiveInt = 65536
    block_size: PositiveInt = 512
    base_momentum: Momentum = 0.99
    entropy_weight: NonNegativeFloat = 1.0

    @model_validator(mode="after")
    def _block_fits(self) -> CARPParams:
        if self.block_size > self.num_prototypes:
            raise ValueError(
                f"block_size ({self.block_size}) exceeds num_prototypes ({self.num_prototypes}): "
                "a partition block cannot hold more prototypes than there are"
            )
        return self
