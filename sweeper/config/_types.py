"""The shared types of the config sections: the strict base model, the label-free metric names,
the constrained numbers, and how a validation resolves components (:func:`resolving`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo

from sweeper.names import LABEL_FREE_METRICS

LabelFreeName = Literal[LABEL_FREE_METRICS]  # declared once, in sweeper.names

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class Strict(BaseModel):
    """Every section: unknown keys refused, frozen, defaults validated, no inf/NaN."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


def resolving(info: ValidationInfo) -> bool:
    """Whether this validation resolves components (imports plugins, checks data roots): yes by
    default; no when a saved sweep is only read (``sweeper status``, ``compare``), which must
    work on a machine without the sweep's data or plugins."""
    return bool((info.context or {}).get("resolve", True))


def search_dirs(info: ValidationInfo | None) -> tuple[Path, ...]:
    """Where a plugin module that is not importable by name is looked for: the config file's
    directory, then the current directory."""
    context: dict[str, Any] = (info.context if info is not None else None) or {}
    dirs = [Path(d) for d in context.get("search_dirs", ())]
    return tuple(dict.fromkeys([*dirs, Path.cwd()]))
