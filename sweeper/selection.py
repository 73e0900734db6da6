"""Selection rules over the table of trials: max, plateau, band, and the labelled oracle.

The input of every function is the trial table, exactly what ``trials.csv`` holds: a column
``trial_id``, one column per searched hyperparameter named by its dotted config key
(``method.params.cov_weight``, ``train.lr``, ...), the final metrics (``rankme/embedding``,
``label_free/alpha_req``, ``oracle/linear/digits``, ...), ``status``, ``epochs_done`` and
``wall_s``.

Rules shared by every function here:

* **Eligibility.** Only rows whose ``status`` is ``ok`` are ever used; diverged, collapsed,
  failed and still-running trials are dropped before anything else, even when their metric
  is the largest.
* **Seeds.** Every searched column whose name is in ``seed_keys`` is a seed: rows that differ
  only by their seeds are one *configuration*, and its metric is the mean over its seeds.
  The mean skips missing values.
* **Missing values.** NaN and ±inf metric values count as missing: they never enter a mean
  and a configuration whose mean is missing is never picked. A missing hyperparameter value
  (a conditional parameter) is ``None`` in :attr:`Pick.params`.
* **Ties** are broken deterministically. ``max`` and ``band``: the lexicographically smallest
  tuple of hyperparameter values (in the order of ``params``; numbers sort before strings,
  missing values last), then the smallest trial id. ``plateau``: the earlier value along the
  ordered hyperparameter, then the higher metric, then as for ``max``.
* A table without eligible rows gives ``None`` (or ``{}``), never an error; a single trial is
  a valid sweep.

The module is pure Python + numpy/pandas (layer L0): it must not import torch, ray, mlflow
or optuna.

References:
    Garrido, Balestriero, Najman, LeCun. *RankMe: Assessing the Downstream Performance of
    Pretrained Self-Supervised Representations by Their Rank.* ICML 2023, §4.1 and Fig. 4
    (select the highest rank; along an ordered hyperparameter, the value that first reaches
    the rank plateau).

    Agrawal, Mondal, Ghosh, Richards. *α-ReQ: Assessing Representation Quality in
    Self-Supervised Learning by measuring eigenspectrum decay.* NeurIPS 2022 (good
    representations have a power-law decay coefficient α close to 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd

__all__ = [
    "Pick",
    "aggregate_seeds",
    "gap_to_oracle",
    "plateau_threshold",
    "select_all",
    "select_band",
    "select_max",
    "select_plateau",
]

Order = Literal["ascending", "descending"]

_TRIAL_ID = "trial_id"
_STATUS = "status"
_ELIGIBLE = "ok"
_TRIAL_IDS = "trial_ids"
_N_TRIALS = "n_trials"
_DEFAULT_SEED_KEYS: tuple[str, ...] = ("seed",)
_RANKME_METRICS: tuple[str, ...] = ("rankme/embedding_clipped", "rankme/embedding")
_OOD_METRIC = "oracle/linear/ood_mean"
_ORDERS: tuple[str, ...] = ("ascending", "descending")
# Label-free metrics where lower is better (self-clustering: 1 = full collapse, 0 = random).
_LOWER_IS_BETTER: frozenset[str] = frozenset({"self_clustering"})


@dataclass(frozen=True)
class Pick:
    """The configuration a selection rule picked.

    Attributes:
        rule: The rule's name: ``"max"``, ``"plateau"`` or ``"band"``, or the key under which
            :func:`select_all` returns it (``"rankme/plateau"``, ``"oracle/linear"``, ...).
        metric: The metric column the rule read.
        params: The picked configuration: every searched hyperparameter except the seeds,
            mapped to its value (``None`` where the value is missing).
        trial_ids: Every eligible trial of that configuration (all its seeds), sorted.
        value: The seed-averaged metric of the configuration.
    """

    rule: str
    metric: str
    params: dict[str, object]
    trial_ids: tuple[str, ...]
    value: float


@dataclass(frozen=True)
class _Group:
    """One configuration: its group key, its trials and its seed-averaged columns."""

    key: tuple[object, ...]
    trial_ids: tuple[str, ...]
    means: dict[str, float]


@dataclass(frozen=True)
class _Config:
    """One configuration with a finite seed-averaged value of the metric being selected on."""

    key: tuple[object, ...]
    trial_ids: tuple[str, ...]
    value: float


# --------------------------------------------------------------------------- public API


def aggregate_seeds(
    table: pd.DataFrame,
    *,
    params: Sequence[str],
    seed_keys: Sequence[str] = _DEFAULT_SEED_KEYS,
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
    names = _names(params)
    keys = _group_keys(names, seed_keys)
    excluded = {_TRIAL_ID, _STATUS, *names, *seed_keys}
    metrics = [column for column in table.columns if column not in excluded and _is_numeric(table[column])]
    groups = _collect(table, params=names, seed_keys=seed_keys, metrics=metrics)
    columns = [*keys, *metrics, _TRIAL_IDS, _N_TRIALS]
    records = [
        {
            **dict(zip(keys, group.key, strict=True)),
            **group.means,
            _TRIAL_IDS: group.trial_ids,
            _N_TRIALS: len(group.trial_ids),
        }
        for group in groups
    ]
    if not records:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame.from_records(records, columns=columns)


def select_max(
    table: pd.DataFrame,
    *,
    metric: str,
    params: Sequence[str],
    seed_keys: Sequence[str] = _DEFAULT_SEED_KEYS,
) -> Pick | None:
    """Pick the configuration with the highest seed-averaged ``metric``.

    RankMe's basic rule (Garrido et al., ICML 2023, §4.1): the highest rank. Also the rule
    of the labelled oracle. Ties: the lexicographically smallest tuple of hyperparameter
    values, then the smallest trial id.

    Returns:
        The pick, or ``None`` when no eligible configuration has a finite ``metric``.

    Raises:
        KeyError: If the table has rows but lacks ``metric``, ``trial_id``, ``status`` or a
            column of ``params``.
    """
    names = _names(params)
    configs = _scored(table, params=names, seed_keys=seed_keys, metric=metric)
    if not configs:
        return None
    return _pick("max", metric, _group_keys(names, seed_keys), min(configs, key=_max_key))


def select_plateau(
    table: pd.DataFrame,
    *,
    metric: str,
    param: str,
    params: Sequence[str],
    tolerance: float = 0.01,
    order: Order = "ascending",
    seed_keys: Sequence[str] = _DEFAULT_SEED_KEYS,
) -> Pick | None:
    """Pick the first value of an ordered hyperparameter that reaches the metric's plateau.

    The plateau rule of RankMe (Garrido et al., ICML 2023, §4.1, Fig. 4): ranks often form
    a plateau at their maximum along an ordered hyperparameter; select the value that
    *first* reaches it along the hyperparameter's order.

    *Reaching the plateau* means a seed-averaged value ``v >= threshold`` where, for the
    maximum ``m`` and ``tolerance`` ``t``: ``threshold = (1 - t) * m`` when ``m > 0``
    (within ``t`` of the maximum, relatively), and ``threshold = (1 + t) * m`` (that is,
    ``m - t * |m|``) when ``m <= 0``, so that the band always lies *below* the maximum and
    the maximum itself is always on the plateau. For ``m == 0`` the band is empty: only
    values equal to the maximum qualify. (RankMe is at least 1, so ``m <= 0`` only occurs for
    other metrics.)

    Several searched hyperparameters: the rule is applied along ``param`` with the others
    held fixed, on the *slice* (the set of configurations sharing the other values) that
    contains the overall best configuration (the :func:`select_max` pick) - coordinate-wise,
    the others sit at their best values and ``param`` at the start of that slice's plateau.
    When every slice holds at most one configuration (continuous Optuna samples never repeat
    a value), the slices say nothing about ``param``; the rule then falls back to the
    *plateau over the top trials*: among all configurations within tolerance of the maximum,
    the first along ``param``'s order.

    Configurations whose ``param`` value is missing have no place along the order and are
    ignored. Ties: the earlier value along the order, then the higher metric, then the
    :func:`select_max` tie-break.

    Args:
        table: The trial table (``trials.csv``).
        metric: The metric column (e.g. ``rankme/embedding``).
        param: The ordered hyperparameter; one of ``params``, not a seed.
        params: The searched hyperparameter columns.
        tolerance: Relative tolerance, ``>= 0`` (``0.01``: within 1 % of the maximum).
        order: The direction along which the plateau is entered: ``"ascending"`` or
            ``"descending"``.
        seed_keys: Names of the seed columns among ``params``.

    Returns:
        The pick, or ``None`` when no eligible configuration has a finite ``metric``.

    Raises:
        ValueError: On a negative or non-finite ``tolerance``, an unknown ``order``, or a
            ``param`` that is not a non-seed member of ``params``.
        KeyError: If the table has rows but lacks a required column.
    """
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
    names = _names(params)
    keys = _group_keys(names, seed_keys)
    if param not in keys:
        raise ValueError(
            f"the plateau parameter {param!r} must be a searched, non-seed parameter; searched: {list(keys)}"
        )
    index = keys.index(param)
    configs = [
        config
        for config in _scored(table, params=names, seed_keys=seed_keys, metric=metric)
        if config.key[index] is not None
    ]
    if not configs:
        return None

    slices: dict[tuple[object, ...], list[_Config]] = {}
    for config in configs:
        slices.setdefault(_without(config.key, index), []).append(config)
    if len(keys) > 1 and max(len(members) for members in slices.values()) == 1:
        pool = configs  # continuous samples: plateau over the top trials
    else:
        best = min(configs, key=_max_key)
        pool = slices[_without(best.key, index)]
    chosen = _first_on_plateau(pool, index=index, tolerance=tolerance, order=order)
    return _pick("plateau", metric, keys, chosen)


def select_band(
    table: pd.DataFrame,
    *,
    metric: str,
    params: Sequence[str],
    target: float = 1.0,
    seed_keys: Sequence[str] = _DEFAULT_SEED_KEYS,
) -> Pick | None:
    """Pick the configuration whose seed-averaged ``metric`` is closest to ``target``.

    The rule for α-ReQ (Agrawal et al., NeurIPS 2022): the eigenspectrum decay coefficient α
    is not monotone in quality, good representations have α close to 1. Ties (equal
    distances): the :func:`select_max` tie-break.

    Returns:
        The pick, or ``None`` when no eligible configuration has a finite ``metric``.

    Raises:
        ValueError: On a non-finite ``target``.
        KeyError: If the table has rows but lacks a required column.
    """
    if not math.isfinite(target):
        raise ValueError(f"target must be finite, got {target!r}")
    names = _names(params)
    configs = _scored(table, params=names, seed_keys=seed_keys, metric=metric)
    if not configs:
        return None
    chosen = min(
        configs,
        key=lambda c: (abs(c.value - target), _params_key(c.key), c.trial_ids[0]),
    )
    return _pick("band", metric, _group_keys(names, seed_keys), chosen)


def select_all(
    table: pd.DataFrame,
    *,
    params: Sequence[str],
    selection_param: str | None,
    tolerance: float,
    order: Order = "ascending",
    label_free: Sequence[str] = (),
    id_dataset: str | None = None,
    seed_keys: Sequence[str] = _DEFAULT_SEED_KEYS,
) -> dict[str, Pick]:
    """Apply the standard rule set of the selection report.

    Keys, in this order (each :attr:`Pick.rule` is set to its key):

    * ``oracle/linear``, ``oracle/knn``: max of ``oracle/linear/<id_dataset>`` and
      ``oracle/knn/<id_dataset>`` (only when ``id_dataset`` is given);
    * ``oracle/ood``: max of ``oracle/linear/ood_mean``;
    * ``rankme/max``: max of ``rankme/embedding_clipped``, or of ``rankme/embedding`` when
      the clipped column is absent or has no finite eligible value;
    * ``rankme/plateau``: :func:`select_plateau` of the same column along
      ``selection_param`` (only when it is given);
    * for each name in ``label_free`` (``"alpha_req"`` or ``"label_free/alpha_req"``;
      ``"rankme"`` is skipped, it is covered above): ``alpha_req/band`` (closest to 1) for
      ``label_free/alpha_req``, ``self_clustering/min`` for ``label_free/self_clustering``
      (lower is better: 1 is full collapse), ``<name>/max`` for the other
      ``label_free/<name>``. ``label_free/*`` columns that are not named are ignored.

    A rule whose metric column is missing, or has no finite value among the eligible trials,
    is absent from the result.

    Raises:
        ValueError: If ``selection_param`` is given but is not a searched non-seed parameter,
            or on an invalid ``tolerance`` / ``order``.
    """
    names = _names(params)
    picks: dict[str, Pick] = {}

    def add(rule: str, pick: Pick | None) -> None:
        if pick is not None:
            picks[rule] = replace(pick, rule=rule)

    def maximum(metric: str) -> Pick | None:
        if metric not in table.columns:
            return None
        return select_max(table, metric=metric, params=names, seed_keys=seed_keys)

    def minimum(metric: str) -> Pick | None:
        if metric not in table.columns:
            return None
        negated = table.assign(**{metric: -pd.to_numeric(table[metric], errors="coerce")})
        pick = select_max(negated, metric=metric, params=names, seed_keys=seed_keys)
        return None if pick is None else replace(pick, value=-pick.value)

    if id_dataset is not None:
        add("oracle/linear", maximum(f"oracle/linear/{id_dataset}"))
        add("oracle/knn", maximum(f"oracle/knn/{id_dataset}"))
    add("oracle/ood", maximum(_OOD_METRIC))

    for metric in _RANKME_METRICS:
        best = maximum(metric)
        if best is None:
            continue
        add("rankme/max", best)
        if selection_param is not None:
            plateau = select_plateau(
                table,
                metric=metric,
                param=selection_param,
                params=names,
                tolerance=tolerance,
                order=order,
                seed_keys=seed_keys,
            )
            add("rankme/plateau", plateau)
        break

    for rule, column in _label_free_rules(label_free):
        if rule.endswith("/band"):
            if column in table.columns:
                add(
                    rule,
                    select_band(table, metric=column, params=names, seed_keys=seed_keys),
                )
        elif rule.endswith("/min"):
            add(rule, minimum(column))
        else:
            add(rule, maximum(column))
    return picks


def gap_to_oracle(
    table: pd.DataFrame,
    picks: Mapping[str, Pick],
    *,
    oracle_metric: str,
    params: Sequence[str],
    seed_keys: Sequence[str] = _DEFAULT_SEED_KEYS,
) -> dict[str, float]:
    """Oracle metric of each pick minus the best oracle metric (``<= 0``), seed-averaged.

    The picked configuration is found by its ``trial_ids`` (then by its ``params``) among the
    eligible configurations of ``table``; the best is the highest seed-averaged finite
    ``oracle_metric`` over all of them.

    Returns:
        One entry per pick, in the order of ``picks``; NaN when the picked configuration has
        no finite oracle value or no configuration has one.

    Raises:
        KeyError: If the table has rows but lacks ``oracle_metric`` or another required
            column.
    """
    names = _names(params)
    keys = _group_keys(names, seed_keys)
    groups = _collect(table, params=names, seed_keys=seed_keys, metrics=[oracle_metric])
    by_trials = {group.trial_ids: group.means[oracle_metric] for group in groups}
    by_key = {group.key: group.means[oracle_metric] for group in groups}
    finite = [value for value in by_key.values() if math.isfinite(value)]
    best = max(finite) if finite else math.nan

    gaps: dict[str, float] = {}
    for name, pick in picks.items():
        value = by_trials.get(pick.trial_ids)
        if value is None and set(pick.params) == set(keys):
            value = by_key.get(tuple(_normalise(pick.params[key]) for key in keys))
        gaps[name] = float(value) - best if value is not None else math.nan
    return gaps


def plateau_threshold(maximum: float, tolerance: float) -> float:
    """Lowest value still on the plateau of :func:`select_plateau` (the band's lower edge).

    ``(1 - tolerance) * maximum`` for a positive maximum, ``(1 + tolerance) * maximum``
    otherwise: the band always lies below the maximum, whatever its sign.
    """
    return (1.0 - tolerance) * maximum if maximum > 0 else (1.0 + tolerance) * maximum


# --------------------------------------------------------------------------- helpers


def _names(params: Sequence[str]) -> tuple[str, ...]:
    """The searched columns as a tuple without duplicates; a lone string is one name."""
    if isinstance(params, str):
        params = (params,)
    return tuple(dict.fromkeys(params))


def _group_keys(params: Sequence[str], seed_keys: Sequence[str]) -> tuple[str, ...]:
    """The searched columns that define a configuration: all but the seeds."""
    seeds = set(seed_keys)
    return tuple(name for name in params if name not in seeds)


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _normalise(value: object) -> object:
    """A hashable plain-Python value; every flavour of missing becomes ``None``."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _order_key(value: object) -> tuple[int, float | str]:
    """Total order over mixed values: numbers, then strings, then others, then missing."""
    if value is None:
        return (3, "")
    if isinstance(value, int | float):
        return (0, float(value))
    if isinstance(value, str):
        return (1, value)
    return (2, repr(value))


def _params_key(key: tuple[object, ...]) -> tuple[tuple[int, float | str], ...]:
    return tuple(_order_key(value) for value in key)


def _max_key(config: _Config) -> tuple[float, tuple[tuple[int, float | str], ...], str]:
    """Sort key whose minimum is the max pick: highest value, smallest params, smallest id."""
    return (-config.value, _params_key(config.key), config.trial_ids[0])


def _without(key: tuple[object, ...], index: int) -> tuple[object, ...]:
    return key[:index] + key[index + 1 :]


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _collect(
    table: pd.DataFrame,
    *,
    params: tuple[str, ...],
    seed_keys: Sequence[str],
    metrics: Sequence[str],
) -> list[_Group]:
    """Eligible rows grouped into configurations, sorted by their hyperparameter values."""
    if table.shape[0] == 0:
        return []
    required = [_TRIAL_ID, _STATUS, *params, *metrics]
    missing = [name for name in required if name not in table.columns]
    if missing:
        raise KeyError(f"the trial table lacks the column(s) {missing}")

    status = table[_STATUS].astype(str).str.strip().str.lower()
    rows = table.loc[status == _ELIGIBLE]
    keys = _group_keys(params, seed_keys)
    ids = [str(trial_id) for trial_id in rows[_TRIAL_ID].tolist()]
    values = {metric: pd.to_numeric(rows[metric], errors="coerce").to_numpy(dtype=float) for metric in metrics}
    columns = [[_normalise(value) for value in rows[key].tolist()] for key in keys]

    positions: dict[tuple[object, ...], list[int]] = {}
    for row in range(len(ids)):
        positions.setdefault(tuple(column[row] for column in columns), []).append(row)

    groups = [
        _Group(
            key=key,
            trial_ids=tuple(sorted(ids[row] for row in members)),
            means={metric: _finite_mean(array[members]) for metric, array in values.items()},
        )
        for key, members in positions.items()
    ]
    groups.sort(key=lambda group: (_params_key(group.key), group.trial_ids))
    return groups


def _scored(
    table: pd.DataFrame,
    *,
    params: tuple[str, ...],
    seed_keys: Sequence[str],
    metric: str,
) -> list[_Config]:
    """The configurations with a finite seed-averaged ``metric``."""
    groups = _collect(table, params=params, seed_keys=seed_keys, metrics=[metric])
    return [
        _Config(key=group.key, trial_ids=group.trial_ids, value=group.means[metric])
        for group in groups
        if math.isfinite(group.means[metric])
    ]


def _first_on_plateau(pool: Sequence[_Config], *, index: int, tolerance: float, order: str) -> _Config:
    """The first configuration along ``key[index]``'s order within tolerance of the max."""
    threshold = plateau_threshold(max(config.value for config in pool), tolerance)
    on_plateau = [config for config in pool if config.value >= threshold]
    ranks = {
        value: rank for rank, value in enumerate(sorted({config.key[index] for config in on_plateau}, key=_order_key))
    }
    sign = 1 if order == "ascending" else -1
    return min(
        on_plateau,
        key=lambda c: (sign * ranks[c.key[index]], *_max_key(c)),
    )


def _pick(rule: str, metric: str, keys: tuple[str, ...], config: _Config) -> Pick:
    return Pick(
        rule=rule,
        metric=metric,
        params=dict(zip(keys, config.key, strict=True)),
        trial_ids=config.trial_ids,
        value=config.value,
    )


def _label_free_rules(names: Sequence[str]) -> list[tuple[str, str]]:
    """``(rule, column)`` for each label-free metric name; ``rankme`` is skipped."""
    rules: dict[str, str] = {}
    for name in _names(names):
        column = name if "/" in name else f"label_free/{name}"
        short = column.rsplit("/", 1)[-1]
        if short == "rankme" or column.startswith("rankme/"):
            continue
        if short == "alpha_req":
            rule = f"{short}/band"
        elif short in _LOWER_IS_BETTER:
            rule = f"{short}/min"
        else:
            rule = f"{short}/max"
        rules.setdefault(rule, column)
    return list(rules.items())
