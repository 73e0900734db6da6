"""The shared types of the config sections: the strict base model, the registry names and
the constrained numbers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from sweeper.hyperparams import METHOD_PARAMS
from sweeper.names import LABEL_FREE_METRICS

DatasetName = Literal["digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "stl10", "imagefolder"]
MethodName = Literal[tuple(METHOD_PARAMS)]  # the names are declared once, in sweeper.hyperparams
BackboneName = Literal["small_cnn", "resnet18", "resnet50", "vit_s16"]
LabelFreeName = Literal[LABEL_FREE_METRICS]  # declared once, in sweeper.names

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class Strict(BaseModel):
    """Every section: unknown keys refused, frozen, defaults validated, no inf/NaN."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)
