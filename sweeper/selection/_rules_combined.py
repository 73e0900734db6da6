"""Rules that read more than one number per configuration: a rank gate before a second
criterion, a plateau whose tolerance is the seeds' own noise, and a Borda consensus of every
label-free metric.

Their defaults were fixed from the papers' reasoning before any benchmark was run (see each
docstring), not tuned on a benchmark.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Literal

import numpy as np
import pandas as pd

from sweeper.selection._rules import Order, param_index, plateau_threshold, select_plateau
from sweeper.selection._table import (
    DEFAULT_SEED_KEYS,
    Config,
    Group,
    Pick,
    collect,
    group_keys,
    make_pick,
    max_key,
    order_key,
    params_key,
    unique_names,
)

Direction = Literal["max", "min", "band"]
"""How a metric ranks configurations: higher is better, lower is better, or closer to the
band's target (α-ReQ: 1) is better."""

RANK_GATE = 0.75
"""The rank gate's fraction of the maximum RankMe, fixed before any benchmark: collapse lowers
RankMe by 34 to 87 % in the digits collapse table (README), so a configuration below 75 % of
the best rank is treated as (partly) collapsed, and the healthy ones all pass."""

BORDA = "consensus/borda"


def select_rank_gate(
    table: pd.DataFrame,
    *,
    rank_metric: str,
    criterion: str,
    params: Sequence[str],
    gate: float = RANK_GATE,
    seed_keys: Sequence[str] = DEFAULT_SEED_KEYS,
) -> Pick | None:
    """Keep the configurations whose rank passes a gate, then pick the best on ``criterion``.

    Reasoning: rank is *necessary, not sufficient* (Garrido et al., ICML 2023, §4): a collapsed
    run has a low RankMe, but among healthy runs a higher rank need not mean better features -
    the anti-collapse terms of VICReg and Barlow Twins keep inflating the rank past the
    accuracy optimum. So RankMe only gates: a configuration passes when its seed-averaged
    ``rank_metric`` is at least ``gate`` times the maximum (:data:`RANK_GATE` = 0.75, below the
    smallest collapse drop we measured, 34 %). Among the survivors the rule takes the highest
    ``criterion``: LiDAR (Thilak et al., ICLR 2024) where the sweep logged it, since it counts
    only the directions that are invariant to the augmentations, which covariance rank ignores;
    else the RankMe of the representation. Ties: as :func:`~sweeper.selection.select_max`.

    Survivors without a finite ``criterion`` are not candidates. For a non-positive maximum
    the gate is ``(2 - gate) · max`` (still below the maximum; RankMe is at least 1).

    Returns:
        The pick (``value``: the criterion's seed mean; ``note``: the gate), or ``None`` when
        no configuration has a finite ``rank_metric`` or no survivor a finite ``criterion``.

    Raises:
        ValueError: Unless ``0 < gate <= 1``.
        KeyError: If the table has rows but lacks a required column.
    """
    if not (math.isfinite(gate) and 0 < gate <= 1):
        raise ValueError(f"gate must be in (0, 1], got {gate!r}")
    names = unique_names(params)
    groups = collect(table, params=names, seed_keys=seed_keys, metrics=[rank_metric, criterion])
    ranked = [group for group in groups if math.isfinite(group.mean(rank_metric))]
    if not ranked:
        return None
    best = max(group.mean(rank_metric) for group in ranked)
    threshold = plateau_threshold(best, 1.0 - gate)
    survivors = [group for group in ranked if group.mean(rank_metric) >= threshold]
    candidates = [
        Config(group.key, group.trial_ids, group.mean(criterion))
        for group in survivors
        if math.isfinite(group.mean(criterion))
    ]
    if not candidates:
        return None
    note = (
        f"gate: {rank_metric} >= {gate:g} x max {best:.4g} = {threshold:.4g}, "
        f"{len(survivors)} of {len(ranked)} configurations pass; then the max of {criterion}"
    )
    chosen = min(candidates, key=max_key)
    return make_pick("rank_gate", criterion, group_keys(names, seed_keys), chosen, note=note)


def seed_spread(
    table: pd.DataFrame,
    *,
    metric: str,
    params: Sequence[str],
    seed_keys: Sequence[str] = DEFAULT_SEED_KEYS,
) -> float:
    """The measured seed noise of ``metric``: the median, over the configurations with at least
    two finite seed values, of their coefficient of variation ``std / mean`` (``ddof = 1``).

    Configurations with a zero mean are skipped. Returns NaN when no configuration has two
    seeds (the noise is unknown).
    """
    groups = collect(table, params=unique_names(params), seed_keys=seed_keys, metrics=[metric])
    spreads = _coefficients_of_variation(groups, metric)
    return statistics.median(spreads) if spreads else math.nan


def select_noise_plateau(
    table: pd.DataFrame,
    *,
    metric: str,
    param: str,
    params: Sequence[str],
    tolerance: float = 0.01,
    order: Order = "ascending",
    seed_keys: Sequence[str] = DEFAULT_SEED_KEYS,
) -> Pick | None:
    """The plateau rule with a tolerance no tighter than the seeds' own noise.

    Reasoning: the plateau rule (Garrido et al., ICML 2023, §4.1, Fig. 4) takes the first value
    along an ordered hyperparameter that is within a tolerance of the maximum RankMe. A fixed
    tolerance tighter than the run-to-run noise of RankMe lets that noise decide where the
    plateau starts; the plateau's width should be what the seeds cannot tell apart. So the
    tolerance is ``max(tolerance, c)``, with ``c`` the :func:`seed_spread` of ``metric`` (the
    median coefficient of variation over the configurations with at least two seeds). With one
    seed per configuration the spread is unknown and the rule is the plain plateau; its
    ``note`` then says "no seed spread known".

    Arguments, ties and errors: as :func:`~sweeper.selection.select_plateau`.

    Returns:
        The pick (``note``: the tolerance used and why), or ``None`` when no eligible
        configuration has a finite ``metric``.
    """
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    names = unique_names(params)
    param_index(param, group_keys(names, seed_keys), order)
    groups = collect(table, params=names, seed_keys=seed_keys, metrics=[metric])
    spreads = _coefficients_of_variation(groups, metric)
    if spreads:
        spread = statistics.median(spreads)
        used = max(tolerance, spread)
        note = (
            f"tolerance = max(selection.tolerance {tolerance:.3g}, median seed std/mean of {metric} "
            f"{spread:.3g} over {len(spreads)} configurations with >= 2 seeds) = {used:.3g}"
        )
    else:
        used = tolerance
        note = f"no seed spread known (one seed per configuration): tolerance = selection.tolerance = {tolerance:.3g}"
    pick = select_plateau(
        table, metric=metric, param=param, params=names, tolerance=used, order=order, seed_keys=seed_keys
    )
    return None if pick is None else replace(pick, rule="noise_plateau", note=note)


def select_consensus(
    table: pd.DataFrame,
    *,
    criteria: Mapping[str, Direction],
    params: Sequence[str],
    param: str | None = None,
    order: Order = "ascending",
    target: float = 1.0,
    seed_keys: Sequence[str] = DEFAULT_SEED_KEYS,
) -> Pick | None:
    """The configuration with the most Borda points over several label-free metrics.

    Reasoning: every label-free signal fails somewhere - rank inflates with the anti-collapse
    weight (VICReg, Barlow Twins), SimCLR's temperature can invert the rank-accuracy relation,
    LiDAR (Thilak et al., ICLR 2024) needs the augmentations to be the right invariances,
    coherence and the pseudo-condition number (Tsitsulin, Munkhoeva, Perozzi 2023) and the
    intrinsic dimension (Facco et al. 2017; lower is better in IdEst) each see one aspect of the
    spectrum or the geometry. A rank aggregate with equal weights needs no scale calibration
    between them and is robust to any single one failing.

    Each metric of ``criteria`` (column -> direction: ``max``, ``min``, or ``band``: closest to
    ``target``) ranks the configurations by their seed means; with ``n`` configurations the
    best gets ``n - 1`` points, the worst ``0`` (points = ``n - rank``; equal values share the
    mean of their ranks); a configuration with no finite value on a metric gets 0 points on it.
    Metrics without any finite value are left out; the configurations are those with a finite
    value on at least one metric. Ties of the total: the earlier value along ``param``'s order
    (missing values last), then as :func:`~sweeper.selection.select_max`.

    Returns:
        The pick (``metric``: ``consensus/borda``, ``value``: its points, ``note``: the metrics
        counted), or ``None`` when no configuration has a finite value on any metric.

    Raises:
        ValueError: On an unknown direction or ``order``, a non-finite ``target``, or a ``param``
            that is not a non-seed member of ``params``.
        KeyError: If the table has rows but lacks a required column.
    """
    unknown = {direction for direction in criteria.values() if direction not in ("max", "min", "band")}
    if unknown:
        raise ValueError(f"unknown direction(s) {sorted(unknown)}: use max, min or band")
    if not math.isfinite(target):
        raise ValueError(f"target must be finite, got {target!r}")
    names = unique_names(params)
    keys = group_keys(names, seed_keys)
    index = None if param is None else param_index(param, keys, order)
    groups = collect(table, params=names, seed_keys=seed_keys, metrics=list(criteria))
    means = {metric: np.array([group.mean(metric) for group in groups]) for metric in criteria}
    used = [metric for metric, values in means.items() if np.isfinite(values).any()]
    present = np.zeros(len(groups), dtype=bool)
    for metric in used:
        present |= np.isfinite(means[metric])
    if not present.any():
        return None
    pool = [group for group, keep in zip(groups, present, strict=True) if keep]
    totals = np.zeros(len(pool))
    for metric in used:
        goodness = _goodness(means[metric][present], criteria[metric], target)
        totals += _borda_points(goodness)
    configs = [Config(group.key, group.trial_ids, float(total)) for group, total in zip(pool, totals, strict=True)]
    along = set() if index is None else {config.key[index] for config in configs if config.key[index] is not None}
    ranks = {value: rank for rank, value in enumerate(sorted(along, key=order_key))}
    chosen = min(configs, key=lambda config: _consensus_key(config, index, order, ranks))
    shown = ", ".join(metric.rsplit("/", 1)[-1] if metric.startswith("label_free/") else metric for metric in used)
    note = (
        f"Borda count over {len(used)} metrics ({shown}); {len(pool)} configurations, 0 to {len(pool) - 1} points each"
    )
    return make_pick("consensus", BORDA, keys, chosen, note=note)


def _coefficients_of_variation(groups: Sequence[Group], metric: str) -> list[float]:
    spreads = []
    for group in groups:
        values = group.values[metric]
        mean = float(values.mean()) if values.size else 0.0
        if values.size >= 2 and mean != 0.0:
            spreads.append(float(values.std(ddof=1)) / abs(mean))
    return spreads


def _goodness(values: np.ndarray, direction: Direction, target: float) -> np.ndarray:
    """Higher is better, NaN stays NaN."""
    if direction == "max":
        return values
    if direction == "min":
        return -values
    return -np.abs(values - target)


def _borda_points(goodness: np.ndarray) -> np.ndarray:
    """``n - rank`` (rank 1 = best; ties share their mean rank); 0 for NaN."""
    n = len(goodness)
    points = np.zeros(n)
    finite = np.flatnonzero(np.isfinite(goodness))
    ordered = finite[np.argsort(-goodness[finite], kind="stable")]
    start = 0
    while start < len(ordered):
        stop = start
        while stop + 1 < len(ordered) and goodness[ordered[stop + 1]] == goodness[ordered[start]]:
            stop += 1
        mean_rank = (start + stop) / 2 + 1
        points[ordered[start : stop + 1]] = n - mean_rank
        start = stop + 1
    return points


def _consensus_key(config: Config, index: int | None, order: str, ranks: Mapping[object, int]) -> tuple[object, ...]:
    """Most points first, then the earlier ``param`` value (missing last), then params, id."""
    along: tuple[int, int] = (0, 0)
    if index is not None:
        value = config.key[index]
        sign = 1 if order == "ascending" else -1
        along = (1, 0) if value is None else (0, sign * ranks[value])
    return (-config.value, *along, params_key(config.key), config.trial_ids[0])
