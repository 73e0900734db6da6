"""The report's standard rule set over one trial table, and each pick's gap to the oracle."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import pandas as pd

from sweeper.names import (
    OOD_MEAN,
    RANKME_REPRESENTATION,
    RANKME_SELECTION_METRICS,
    label_free_key,
    oracle_key,
)
from sweeper.selection._rules import Order, select_band, select_max, select_plateau
from sweeper.selection._rules_combined import (
    Direction,
    select_consensus,
    select_noise_plateau,
    select_rank_gate,
)
from sweeper.selection._table import (
    DEFAULT_SEED_KEYS,
    Pick,
    collect,
    group_keys,
    normalise,
    scored,
    unique_names,
)

LIDAR = label_free_key("lidar")
# The direction of every label-free metric a rule reads; the RankMe of the embedding (clipped
# where reported) is added by select_all. Lower is better for the self-clustering (1 = full
# collapse), coherence and the pseudo-condition number (a spread-out, well-conditioned spectrum
# is the healthy one; Tsitsulin et al. 2023) and the intrinsic dimension (IdEst); α-ReQ is best
# close to 1 (Agrawal et al. 2022); the others are ranks, higher is better.
LABEL_FREE_DIRECTIONS: dict[str, Direction] = {
    RANKME_REPRESENTATION: "max",
    label_free_key("classical_rank"): "max",
    label_free_key("stable_rank"): "max",
    label_free_key("nesum"): "max",
    LIDAR: "max",
    label_free_key("lidar_representation"): "max",
    label_free_key("alpha_req"): "band",
    label_free_key("self_clustering"): "min",
    label_free_key("coherence"): "min",
    label_free_key("pseudo_condition"): "min",
    label_free_key("intrinsic_dimension"): "min",
}


def select_all(
    table: pd.DataFrame,
    *,
    params: Sequence[str],
    selection_param: str | None,
    tolerance: float,
    order: Order = "ascending",
    label_free: Sequence[str] = (),
    id_dataset: str | None = None,
    seed_keys: Sequence[str] = DEFAULT_SEED_KEYS,
) -> dict[str, Pick]:
    """Apply the standard rule set of the selection report.

    Keys, in this order (each :attr:`Pick.rule` is set to its key):

    * ``oracle/linear``, ``oracle/knn``: max of ``oracle/linear/<id_dataset>`` and
      ``oracle/knn/<id_dataset>`` (only when ``id_dataset`` is given);
    * ``oracle/ood``: max of ``oracle/linear/ood_mean``;
    * ``rankme/max``: max of ``rankme/embedding_clipped``, or of ``rankme/embedding`` when
      the clipped column is absent or has no finite eligible value;
    * ``rankme/plateau`` and ``rankme/noise_plateau``: :func:`select_plateau` and
      :func:`select_noise_plateau` of the same column along ``selection_param`` (only when it
      is given);
    * ``rank_gate/lidar``: :func:`select_rank_gate`, the same RankMe column as the gate and
      ``label_free/lidar`` as the criterion when the table has a finite eligible LiDAR value,
      else ``rank_gate/representation`` with ``rankme/representation``;
    * ``consensus/borda``: :func:`select_consensus` over that RankMe column and every column of
      :data:`LABEL_FREE_DIRECTIONS` the table holds, ties along ``selection_param``;
    * for each name in ``label_free`` (``"alpha_req"`` or ``"label_free/alpha_req"``;
      ``"rankme"`` is skipped, it is covered above): ``alpha_req/band`` (closest to 1) for
      ``label_free/alpha_req``, ``<name>/min`` for the lower-is-better metrics
      (``self_clustering``, ``coherence``, ``pseudo_condition``, ``intrinsic_dimension``),
      ``<name>/max`` for the other ``label_free/<name>``. ``label_free/*`` columns that are not
      named are ignored here (the consensus reads them all).

    A rule whose metric column is missing, or has no finite value among the eligible trials,
    is absent from the result.

    Raises:
        ValueError: If ``selection_param`` is given but is not a searched non-seed parameter,
            or on an invalid ``tolerance`` / ``order``.
    """
    names = unique_names(params)
    picks: dict[str, Pick] = {}

    def add(rule: str, pick: Pick | None) -> None:
        if pick is not None:
            picks[rule] = replace(pick, rule=rule)

    def maximum(metric: str) -> Pick | None:
        if metric not in table.columns:
            return None
        return select_max(table, metric=metric, params=names, seed_keys=seed_keys)

    if id_dataset is not None:
        add("oracle/linear", maximum(oracle_key("linear", id_dataset)))
        add("oracle/knn", maximum(oracle_key("knn", id_dataset)))
    add("oracle/ood", maximum(OOD_MEAN))

    best = next((pick for pick in map(maximum, RANKME_SELECTION_METRICS) if pick is not None), None)
    rank = None if best is None else best.metric
    if rank is not None:
        add("rankme/max", best)
        if selection_param is not None:
            along = {"param": selection_param, "tolerance": tolerance, "order": order}
            add("rankme/plateau", select_plateau(table, metric=rank, params=names, seed_keys=seed_keys, **along))
            add(
                "rankme/noise_plateau",
                select_noise_plateau(table, metric=rank, params=names, seed_keys=seed_keys, **along),
            )
        _add_rank_gate(table, add, rank=rank, params=names, seed_keys=seed_keys)
    criteria: dict[str, Direction] = {rank: "max"} if rank is not None else {}
    criteria |= {column: direction for column, direction in LABEL_FREE_DIRECTIONS.items() if column in table.columns}
    if criteria:
        consensus = select_consensus(
            table, criteria=criteria, params=names, param=selection_param, order=order, seed_keys=seed_keys
        )
        add("consensus/borda", consensus)

    for rule, column in _label_free_rules(label_free):
        if column not in table.columns:
            continue
        if rule.endswith("/band"):
            add(rule, select_band(table, metric=column, params=names, seed_keys=seed_keys))
        elif rule.endswith("/min"):
            add(rule, _minimum(table, metric=column, params=names, seed_keys=seed_keys))
        else:
            add(rule, maximum(column))
    return picks


def gap_to_oracle(
    table: pd.DataFrame,
    picks: Mapping[str, Pick],
    *,
    oracle_metric: str,
    params: Sequence[str],
    seed_keys: Sequence[str] = DEFAULT_SEED_KEYS,
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
    names = unique_names(params)
    keys = group_keys(names, seed_keys)
    groups = collect(table, params=names, seed_keys=seed_keys, metrics=[oracle_metric])
    by_trials = {group.trial_ids: group.mean(oracle_metric) for group in groups}
    by_key = {group.key: group.mean(oracle_metric) for group in groups}
    finite = [value for value in by_key.values() if math.isfinite(value)]
    best = max(finite) if finite else math.nan

    gaps: dict[str, float] = {}
    for name, pick in picks.items():
        value = by_trials.get(pick.trial_ids)
        if value is None and set(pick.params) == set(keys):
            value = by_key.get(tuple(normalise(pick.params[key]) for key in keys))
        gaps[name] = float(value) - best if value is not None else math.nan
    return gaps


def _add_rank_gate(
    table: pd.DataFrame,
    add: Callable[[str, Pick | None], None],
    *,
    rank: str,
    params: tuple[str, ...],
    seed_keys: Sequence[str],
) -> None:
    """``rank_gate/lidar`` when the sweep logged LiDAR, else ``rank_gate/representation``."""
    logged = LIDAR in table.columns and bool(scored(table, params=params, seed_keys=seed_keys, metric=LIDAR))
    criterion, rule = (LIDAR, "rank_gate/lidar") if logged else (RANKME_REPRESENTATION, "rank_gate/representation")
    if criterion in table.columns:
        add(rule, select_rank_gate(table, rank_metric=rank, criterion=criterion, params=params, seed_keys=seed_keys))


def _minimum(table: pd.DataFrame, *, metric: str, params: tuple[str, ...], seed_keys: Sequence[str]) -> Pick | None:
    """The lowest seed-averaged ``metric``: :func:`select_max` of its negation."""
    negated = table.assign(**{metric: -pd.to_numeric(table[metric], errors="coerce")})
    pick = select_max(negated, metric=metric, params=params, seed_keys=seed_keys)
    return None if pick is None else replace(pick, value=-pick.value)


def _label_free_rules(names: Sequence[str]) -> list[tuple[str, str]]:
    """``(rule, column)`` for each label-free metric name; ``rankme`` is skipped."""
    rules: dict[str, str] = {}
    for name in unique_names(names):
        column = name if "/" in name else label_free_key(name)
        short = column.rsplit("/", 1)[-1]
        if short == "rankme" or column.startswith("rankme/"):
            continue
        kind = LABEL_FREE_DIRECTIONS.get(column, "max")
        rules.setdefault(f"{short}/{kind}", column)
    return list(rules.items())
