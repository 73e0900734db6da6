"""The trial table as the rules see it: eligible trials grouped into configurations, their
seeds averaged, and the deterministic orders every tie-break uses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweeper.names import is_eligible

TRIAL_ID = "trial_id"
STATUS = "status"
TRIAL_IDS = "trial_ids"
N_TRIALS = "n_trials"
DEFAULT_SEED_KEYS: tuple[str, ...] = ("seed",)


@dataclass(frozen=True)
class Pick:
    """The configuration a selection rule picked.

    Attributes:
        rule: The rule's name: ``"max"``, ``"plateau"``, ``"band"``, ``"rank_gate"``,
            ``"noise_plateau"`` or ``"consensus"``, or the key under which
            :func:`~sweeper.selection.select_all` returns it (``"rankme/plateau"``,
            ``"oracle/linear"``, ...).
        metric: The metric column the rule read (``consensus/borda`` for the Borda count).
        params: The picked configuration: every searched hyperparameter except the seeds,
            mapped to its value (``None`` where the value is missing).
        trial_ids: Every eligible trial of that configuration (all its seeds), sorted.
        value: The seed-averaged metric of the configuration (the Borda points for the
            consensus).
        note: What the rule decided on the way, for the report (the gate's threshold, the
            noise-aware tolerance, ...); empty for the plain rules.
    """

    rule: str
    metric: str
    params: dict[str, object]
    trial_ids: tuple[str, ...]
    value: float
    note: str = ""


@dataclass(frozen=True)
class Group:
    """One configuration: its key, its trials, and per metric its seeds' finite values."""

    key: tuple[object, ...]
    trial_ids: tuple[str, ...]
    values: dict[str, np.ndarray]

    def mean(self, metric: str) -> float:
        """The seed mean of ``metric`` over its finite values; NaN when there is none."""
        finite = self.values[metric]
        return float(finite.mean()) if finite.size else math.nan


@dataclass(frozen=True)
class Config:
    """One configuration with a finite seed-averaged value of the metric being selected on."""

    key: tuple[object, ...]
    trial_ids: tuple[str, ...]
    value: float


def aggregate_seeds(
    table: pd.DataFrame,
    *,
    params: Sequence[str],
    seed_keys: Sequence[str] = DEFAULT_SEED_KEYS,
) -> pd.DataFrame:
    """Average the seeds of every configuration, over the eligible trials only.

    Args:
        table: The trial table (``trials.csv``).
        params: The searched hyperparameter columns (seed columns included or not).
        seed_keys: Names of the seed columns among ``params``.

    Returns:
        One row per configuration (rows with ``status == "ok"`` grouped by the non-seed
        ``params``; missing values form their own group), sorted by those values. Columns:
        the non-seed ``params``; every other numeric column of ``table`` (metrics,
        ``epochs_done``, ``wall_s``) as its mean over the seeds, skipping NaN and ±inf;
        ``trial_ids``, the sorted tuple of the configuration's trial ids; and ``n_trials``.
        Non-numeric columns other than the params (``status``, ...) and the seed columns are
        dropped.

    Raises:
        KeyError: If the table has rows but lacks ``trial_id``, ``status`` or a column of
            ``params``.
    """
    names = unique_names(params)
    keys = group_keys(names, seed_keys)
    excluded = {TRIAL_ID, STATUS, *names, *seed_keys}
    metrics = [column for column in table.columns if column not in excluded and _is_numeric(table[column])]
    groups = collect(table, params=names, seed_keys=seed_keys, metrics=metrics)
    columns = [*keys, *metrics, TRIAL_IDS, N_TRIALS]
    records = [
        {
            **dict(zip(keys, group.key, strict=True)),
            **{metric: group.mean(metric) for metric in metrics},
            TRIAL_IDS: group.trial_ids,
            N_TRIALS: len(group.trial_ids),
        }
        for group in groups
    ]
    if not records:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame.from_records(records, columns=columns)


def unique_names(params: Sequence[str]) -> tuple[str, ...]:
    """The searched columns as a tuple without duplicates; a lone string is one name."""
    if isinstance(params, str):
        params = (params,)
    return tuple(dict.fromkeys(params))


def group_keys(params: Sequence[str], seed_keys: Sequence[str]) -> tuple[str, ...]:
    """The searched columns that define a configuration: all but the seeds."""
    seeds = set(seed_keys)
    return tuple(name for name in params if name not in seeds)


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def normalise(value: object) -> object:
    """A hashable plain-Python value; every flavour of missing becomes ``None``."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def order_key(value: object) -> tuple[int, float | str]:
    """Total order over mixed values: numbers, then strings, then others, then missing."""
    if value is None:
        return (3, "")
    if isinstance(value, int | float):
        return (0, float(value))
    if isinstance(value, str):
        return (1, value)
    return (2, repr(value))


def params_key(key: tuple[object, ...]) -> tuple[tuple[int, float | str], ...]:
    return tuple(order_key(value) for value in key)


def max_key(config: Config) -> tuple[float, tuple[tuple[int, float | str], ...], str]:
    """Sort key whose minimum is the max pick: highest value, smallest params, smallest id."""
    return (-config.value, params_key(config.key), config.trial_ids[0])


def without(key: tuple[object, ...], index: int) -> tuple[object, ...]:
    return key[:index] + key[index + 1 :]


def collect(
    table: pd.DataFrame,
    *,
    params: tuple[str, ...],
    seed_keys: Sequence[str],
    metrics: Sequence[str],
) -> list[Group]:
    """Eligible rows grouped into configurations, sorted by their hyperparameter values.

    NaN and ±inf metric values are dropped from each group's values (missing, not zero).
    """
    if table.shape[0] == 0:
        return []
    required = [TRIAL_ID, STATUS, *params, *metrics]
    missing = [name for name in required if name not in table.columns]
    if missing:
        raise KeyError(f"the trial table lacks the column(s) {missing}")

    status = table[STATUS].astype(str).str.strip().str.lower()
    rows = table.loc[status.map(is_eligible).astype(bool)]
    keys = group_keys(params, seed_keys)
    ids = [str(trial_id) for trial_id in rows[TRIAL_ID].tolist()]
    values = {metric: pd.to_numeric(rows[metric], errors="coerce").to_numpy(dtype=float) for metric in metrics}
    columns = [[normalise(value) for value in rows[key].tolist()] for key in keys]

    positions: dict[tuple[object, ...], list[int]] = {}
    for row in range(len(ids)):
        positions.setdefault(tuple(column[row] for column in columns), []).append(row)

    groups = []
    for key, members in positions.items():
        seeds = {metric: array[members] for metric, array in values.items()}
        groups.append(
            Group(
                key=key,
                trial_ids=tuple(sorted(ids[row] for row in members)),
                values={metric: seed[np.isfinite(seed)] for metric, seed in seeds.items()},
            )
        )
    groups.sort(key=lambda group: (params_key(group.key), group.trial_ids))
    return groups


def scored(
    table: pd.DataFrame,
    *,
    params: tuple[str, ...],
    seed_keys: Sequence[str],
    metric: str,
) -> list[Config]:
    """The configurations with a finite seed-averaged ``metric``."""
    groups = collect(table, params=params, seed_keys=seed_keys, metrics=[metric])
    configs = [Config(key=group.key, trial_ids=group.trial_ids, value=group.mean(metric)) for group in groups]
    return [config for config in configs if math.isfinite(config.value)]


def make_pick(rule: str, metric: str, keys: tuple[str, ...], config: Config, *, note: str = "") -> Pick:
    return Pick(
        rule=rule,
        metric=metric,
        params=dict(zip(keys, config.key, strict=True)),
        trial_ids=config.trial_ids,
        value=config.value,
        note=note,
    )
