"""The single-metric rules: the highest value, the first value on the plateau, the value
closest to a target."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import pandas as pd

from sweeper.selection._table import (
    DEFAULT_SEED_KEYS,
    Config,
    Pick,
    group_keys,
    make_pick,
    max_key,
    order_key,
    params_key,
    scored,
    unique_names,
    without,
)

Order = Literal["ascending", "descending"]
ORDERS: tuple[str, ...] = ("ascending", "descending")


def select_max(
    table: pd.DataFrame,
    *,
    metric: str,
    params: Sequence[str],
    seed_keys: Sequence[str] = DEFAULT_SEED_KEYS,
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
    names = unique_names(params)
    configs = scored(table, params=names, seed_keys=seed_keys, metric=metric)
    if not configs:
        return None
    return make_pick("max", metric, group_keys(names, seed_keys), min(configs, key=max_key))


def select_plateau(
    table: pd.DataFrame,
    *,
    metric: str,
    param: str,
    params: Sequence[str],
    tolerance: float = 0.01,
    order: Order = "ascending",
    seed_keys: Sequence[str] = DEFAULT_SEED_KEYS,
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
    names = unique_names(params)
    keys = group_keys(names, seed_keys)
    index = param_index(param, keys, order)
    configs = [
        config
        for config in scored(table, params=names, seed_keys=seed_keys, metric=metric)
        if config.key[index] is not None
    ]
    if not configs:
        return None

    slices: dict[tuple[object, ...], list[Config]] = {}
    for config in configs:
        slices.setdefault(without(config.key, index), []).append(config)
    if len(keys) > 1 and max(len(members) for members in slices.values()) == 1:
        pool = configs  # continuous samples: plateau over the top trials
    else:
        best = min(configs, key=max_key)
        pool = slices[without(best.key, index)]
    chosen = _first_on_plateau(pool, index=index, tolerance=tolerance, order=order)
    return make_pick("plateau", metric, keys, chosen)


def select_band(
    table: pd.DataFrame,
    *,
    metric: str,
    params: Sequence[str],
    target: float = 1.0,
    seed_keys: Sequence[str] = DEFAULT_SEED_KEYS,
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
    names = unique_names(params)
    configs = scored(table, params=names, seed_keys=seed_keys, metric=metric)
    if not configs:
        return None
    chosen = min(
        configs,
        key=lambda c: (abs(c.value - target), params_key(c.key), c.trial_ids[0]),
    )
    return make_pick("band", metric, group_keys(names, seed_keys), chosen)


def plateau_threshold(maximum: float, tolerance: float) -> float:
    """Lowest value still on the plateau of :func:`select_plateau` (the band's lower edge).

    ``(1 - tolerance) * maximum`` for a positive maximum, ``(1 + tolerance) * maximum``
    otherwise: the band always lies below the maximum, whatever its sign.
    """
    return (1.0 - tolerance) * maximum if maximum > 0 else (1.0 + tolerance) * maximum


def param_index(param: str, keys: tuple[str, ...], order: str) -> int:
    """Where the ordered hyperparameter sits in a configuration's key; checks ``order``."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if param not in keys:
        raise ValueError(
            f"the plateau parameter {param!r} must be a searched, non-seed parameter; searched: {list(keys)}"
        )
    return keys.index(param)


def _first_on_plateau(pool: Sequence[Config], *, index: int, tolerance: float, order: str) -> Config:
    """The first configuration along ``key[index]``'s order within tolerance of the max."""
    threshold = plateau_threshold(max(config.value for config in pool), tolerance)
    on_plateau = [config for config in pool if config.value >= threshold]
    ranks = {
        value: rank for rank, value in enumerate(sorted({config.key[index] for config in on_plateau}, key=order_key))
    }
    sign = 1 if order == "ascending" else -1
    return min(
        on_plateau,
        key=lambda c: (sign * ranks[c.key[index]], *max_key(c)),
    )
