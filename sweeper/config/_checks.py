"""Checks shared by the sections and the whole config: unsafe values anywhere (non-finite
floats, control characters, credentials in URIs), dotted keys, the objective, and the
``did you mean`` suggestion of every message."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from sweeper.config._types import LABEL_FREE_METRICS
from sweeper.names import OOD_MEAN

if TYPE_CHECKING:
    from sweeper.config._sweep import SweeperConfig

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def suggest(word: str, options: Any) -> str:
    """`` (did you mean 'x'?)`` for the option closest to ``word``, or ``""``."""
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def located(loc: tuple[str | int, ...], message: str) -> ValidationError:
    """A validation error at ``loc`` (relative to the validated field) with ``message`` as is."""
    error = InitErrorDetails(type=PydanticCustomError("sweeper", message), loc=loc, input=None)
    return ValidationError.from_exception_data("config", [error])


def leaves(data: Any) -> list[tuple[str, Any]]:
    """``(dotted.key, value)`` of every non-container value in ``data`` (list items as
    ``key[i]``), each shared container visited once (YAML aliases share them)."""
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        key, node = stack.pop()
        if not isinstance(node, Mapping | list | tuple):
            found.append((key, node))
        elif id(node) not in seen:
            seen.add(id(node))
            if isinstance(node, Mapping):
                stack += [(f"{key}.{child}" if key else str(child), value) for child, value in node.items()]
            else:
                stack += [(f"{key}[{index}]", value) for index, value in enumerate(node)]
    return found


def unsafe(value: Any) -> str | None:
    """Why ``value`` may not appear anywhere in a config, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"Input should be a finite number (got {value}): give a number"
    if not isinstance(value, str):
        return None
    control = _CONTROL.search(value)
    if control is not None:
        return f"contains the control character {control[0]!r}: remove it"
    from sweeper.storage import credentials_problem

    return credentials_problem(value)


def check_dotted_key(plain: dict[str, Any], dotted: str, *, where: str) -> None:
    """``dotted`` must name a value (not a section) of the config ``plain``."""
    node: Any = plain
    walked: list[str] = []
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            options = sorted(node) if isinstance(node, dict) else []
            hint = suggest(part, options)
            prefix = ".".join(walked) or "the config"
            raise ValueError(f"{where}: {dotted!r} does not exist ({prefix} has no {part!r}{hint})")
        node = node[part]
        walked.append(part)
    if isinstance(node, dict):
        raise ValueError(f"{where}: {dotted!r} is a section, not a hyperparameter")


def check_objective(config: SweeperConfig) -> None:
    """``search.objective`` must be a metric the trials will report: else the objective is NaN
    in every trial, and Tune, Optuna and the schedulers optimise nothing."""
    objective = config.search.objective
    produced = config.objective_metrics()
    if objective in produced:
        return
    group, _, rest = objective.partition("/")
    probe, _, dataset = rest.partition("/")
    if group == "label_free" and rest in LABEL_FREE_METRICS and rest != "rankme":
        problem = f"{rest} is not computed: add it to evaluation.label_free"
    elif group == "label_free":
        choices = [name for name in LABEL_FREE_METRICS if name != "rankme"]
        problem = f"unknown label-free metric {rest!r}{suggest(rest, choices)}; the metrics are {choices}"
    elif group == "oracle" and probe in ("linear", "knn") and probe not in config.evaluation.oracle:
        problem = f"the {probe} probe does not run: add {probe} to evaluation.oracle"
    elif objective == OOD_MEAN:
        problem = "the OOD mean needs out-of-distribution data sets: list them in evaluation.oracle_datasets"
    elif group == "oracle" and dataset and probe in ("linear", "knn"):
        names = config.oracle_dataset_names()
        problem = f"no oracle data set {dataset!r}{suggest(dataset, names)}: the probes run on {names}"
    else:
        problem = f"not a metric of this sweep{suggest(objective, produced)}"
    raise ValueError(f"search.objective: {objective!r}: {problem}; this sweep reports {produced}")


def check_workers(config: SweeperConfig) -> None:
    """A data-parallel trial splits every batch evenly between its workers."""
    workers = config.search.resources.workers
    spec = config.search.space.get("train.batch_size")
    batches = [config.train.batch_size] if spec is None else (spec.values or [])
    for batch in batches:
        if isinstance(batch, int) and batch % workers:
            raise ValueError(
                f"train.batch_size: {batch} does not split evenly between search.resources.workers={workers}: "
                f"use a multiple of {workers} (the global batch is split across the workers)"
            )
