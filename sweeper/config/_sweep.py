"""The whole config, :class:`SweeperConfig`: its sections and the checks that need more than
one of them (search space keys, the selection parameter, the objective, the workers' batch)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from sweeper import registry
from sweeper.config._checks import check_dotted_key, check_objective, check_workers, leaves, suggest, unsafe
from sweeper.config._data import DataConfig
from sweeper.config._paths import absolute_path
from sweeper.config._sections import (
    EvaluationConfig,
    MethodConfig,
    ModelConfig,
    SearchConfig,
    SelectionConfig,
    TrackingConfig,
    TrainConfig,
)
from sweeper.config._types import Strict, resolving, search_dirs
from sweeper.names import (
    OOD_MEAN,
    RANKME_EMBEDDING,
    RANKME_PROTOTYPES,
    RANKME_REPRESENTATION,
    label_free_key,
    oracle_key,
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class SweeperConfig(Strict):
    """The whole sweep: see DESIGN.md for the meaning of each key."""

    name: str
    # Modules imported before anything else is validated (driver and every trial process), for
    # what they register (sweeper.register_method/backbone/dataset).
    plugins: list[str] = Field(default_factory=list)
    storage_path: str = "./sweeps"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    # Whether the components were resolved (imported and checked) when this config was validated.
    _resolved: bool = PrivateAttr(default=True)

    @model_validator(mode="before")
    @classmethod
    def _safe_values(cls, data: Any, info: ValidationInfo) -> Any:
        """Before anything else can echo a value: no URI with credentials, no non-finite float
        and no control character anywhere in the config, whatever the key's type. Then the
        ``plugins`` are imported, so that the names they register resolve."""
        for key, value in leaves(data):
            problem = unsafe(value)
            if problem is not None:
                raise ValueError(f"{key}: {problem}")
        plugins = data.get("plugins") if isinstance(data, Mapping) else None
        if resolving(info) and isinstance(plugins, list) and all(isinstance(p, str) for p in plugins):
            registry.import_plugins(plugins, search_dirs=search_dirs(info))
        return data

    @field_validator("storage_path")
    @classmethod
    def _storage_uri(cls, value: str) -> str:
        from sweeper.storage import check_storage_uri, is_uri

        return check_storage_uri(value) if is_uri(value) else str(absolute_path(Path(value)))

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a usable sweep name: use letters, digits, '.', '_' or '-'")
        return value

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> SweeperConfig:
        self._resolved = resolving(info)
        self._check_search_space()
        self._check_selection_param()
        check_objective(self)
        check_workers(self)
        return self

    def _check_search_space(self) -> None:
        plain = self.to_dict()
        for key, spec in self.search.space.items():
            check_dotted_key(plain, key, where="search.space")
            if self.search.algorithm == "grid" and spec.values is None:
                raise ValueError(
                    f"search.space.{key}: the grid algorithm needs values: [...] "
                    "(low/high ranges need algorithm optuna or random)"
                )

    def _check_selection_param(self) -> None:
        """The plateau rule's ordered hyperparameter: a searched key; the only one by default."""
        if self.selection.param is None and self.selection.rule in ("plateau", "noise_plateau"):
            if len(self.search.space) != 1:
                raise ValueError(
                    "selection.param: the plateau rule needs the ordered hyperparameter; "
                    f"set it to one of {sorted(self.search.space)}"
                )
            object.__setattr__(self.selection, "param", next(iter(self.search.space)))
        elif self.selection.param is not None and self.selection.param not in self.search.space:
            raise ValueError(
                f"selection.param: {self.selection.param!r} is not searched"
                f"{suggest(self.selection.param, self.search.space)}; "
                f"set it to one of the searched keys {sorted(self.search.space)}, or remove it"
            )

    def objective_metrics(self) -> list[str]:
        """The metric keys this config's trials report that ``search.objective`` may name:
        RankMe (and the prototypes' for clustering methods), the configured label-free metrics,
        and each configured probe on the training data set and on every OOD data set."""
        keys = [RANKME_EMBEDDING, RANKME_REPRESENTATION]
        if self.reports_prototypes:
            keys.append(RANKME_PROTOTYPES)
        keys += [label_free_key(name) for name in self.evaluation.label_free if name != "rankme"]
        names = self.oracle_dataset_names()
        keys += [oracle_key(probe, name) for probe in self.evaluation.oracle for name in names]
        if "linear" in self.evaluation.oracle and self.evaluation.oracle_datasets:
            keys.append(OOD_MEAN)
        return keys

    @property
    def reports_prototypes(self) -> bool:
        """Whether the trials report ``rankme/prototypes`` (a method with a prototype head);
        assumed for a plugin method of a sweep read without resolving its components."""
        name = self.method.name
        if not (self._resolved or registry.is_builtin("method", name)):
            return True
        return registry.method_has_prototypes(name)

    @property
    def resolved(self) -> bool:
        """Whether this config's components were resolved (imported, checked) at validation."""
        return self._resolved

    def oracle_dataset_names(self) -> list[str]:
        """The ``<dataset>`` of ``oracle/<probe>/<dataset>``: the training data set's name, then
        each OOD data set's, a repeated name suffixed ``-2``, ``-3``, ... (as the engine does)."""
        names: list[str] = []
        for data in [self.data, *self.evaluation.oracle_datasets]:
            base = data.display_name
            name, suffix = base, 2
            while name in names:
                name, suffix = f"{base}-{suffix}", suffix + 1
            names.append(name)
        return names

    def to_dict(self) -> dict[str, Any]:
        """The config as plain YAML-able data (the form saved with checkpoints and in MLflow)."""
        return self.model_dump(mode="json")

    def with_overrides(self, overrides: Mapping[str, Any]) -> SweeperConfig:
        """A new validated config with ``dotted.key: value`` pairs applied (a trial's config),
        its components resolved as this config's were."""
        # Imported here: loading builds on this class (a module-level import would be a cycle).
        from sweeper.config._load import apply_overrides, validate

        return validate(apply_overrides(self.to_dict(), overrides), resolve=self._resolved)

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name
