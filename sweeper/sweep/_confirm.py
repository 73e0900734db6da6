"""Confirmation of the top trials (``search.confirm``, ``sweeper confirm``).

After the search, the ``top_k`` configurations the headline rule (``selection.rule``) ranks
first are trained again, each with ``seeds`` new seeds, as trials of the same sweep: a Tune
experiment of their own in ``<sweep>/confirm/`` (neither the search's grid nor its Optuna study
can take given configurations with new seeds), logged under the sweep's MLflow parent run with
the tag ``sweeper.confirm=true``. The trial table holds them with ``phase=confirm``, and since
every rule averages a configuration's seeds, the pick is decided on seed means.

Why only the top: a single seed decides near-ties wrongly (RankMe's plateau band is a few
percent wide, and its seed spread is of that order), while configurations far from the pick
stay far whatever the seed. The top configurations are the rule's successive picks: its pick,
then its pick once that configuration is set aside, and so on.

They are chosen once, when the confirmation starts, from the search's trials only, and saved in
``confirm/points.json``: a resume runs the same trials, whatever the confirmation trials have
done to the ranking since. Confirmation seeds are ``seed + CONFIRM_SEED_OFFSET + j``: a range no
repeat of the search (``seed + repeat``) reaches, so growing the search later never trains a
confirmation seed again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

from sweeper import report
from sweeper.config import SweeperConfig
from sweeper.errors import SweepError
from sweeper.names import PHASE, SEARCH_PHASE
from sweeper.selection import Pick
from sweeper.storage import SweepLocation
from sweeper.sweep._results import CONFIRM_DIR

CONFIRM_SEED_OFFSET = 1_000_000
POINTS_FILE = "points.json"


@dataclass(frozen=True)
class ConfirmationPlan:
    """What the confirmation trains.

    Attributes:
        top_k: Configurations asked for (``search.confirm.top_k``).
        seeds: New seeds per configuration (``search.confirm.seeds``).
        rule: The headline rule key that ranked them (``rankme/plateau``, ...).
        configurations: The searched values of each chosen configuration, best first (fewer
            than ``top_k`` when the search has fewer eligible configurations).
        points: One trial config per configuration and seed: its values and ``seed``.
    """

    top_k: int
    seeds: int
    rule: str
    configurations: list[dict[str, Any]]
    points: list[dict[str, Any]]

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, indent=1).encode()


def top_configurations(table: pd.DataFrame, config: SweeperConfig, *, top_k: int) -> tuple[str, list[Pick]]:
    """The headline rule's key and its ``top_k`` successive picks over the search trials of
    ``table`` (fewer when fewer configurations are eligible)."""
    remaining = table[table[PHASE] == SEARCH_PHASE] if PHASE in table.columns else table
    rule, pick = report.SweepReport.build(config, remaining).headline
    picks: list[Pick] = []
    while pick is not None and len(picks) < top_k:
        picks.append(pick)
        remaining = remaining[~remaining["trial_id"].isin(pick.trial_ids)]
        pick = report.SweepReport.build(config, remaining).headline[1]
    return rule, picks


def plan_confirmation(table: pd.DataFrame, config: SweeperConfig) -> ConfirmationPlan:
    """The confirmation ``config.search.confirm`` asks for, over the search trials of ``table``."""
    confirm = config.search.confirm
    if confirm is None:
        raise ValueError("plan_confirmation needs search.confirm")
    rule, picks = top_configurations(table, config, top_k=confirm.top_k)
    configurations = [{key: value for key, value in pick.params.items() if value is not None} for pick in picks]
    seeds = [config.seed + CONFIRM_SEED_OFFSET + j for j in range(confirm.seeds)]
    points = [{**values, "seed": seed} for values in configurations for seed in seeds]
    return ConfirmationPlan(confirm.top_k, confirm.seeds, rule, configurations, points)


def confirmation_plan(location: SweepLocation, table: pd.DataFrame, config: SweeperConfig) -> ConfirmationPlan:
    """The sweep's confirmation: the one saved when it started, else planned from ``table`` now
    and saved (before any confirmation trial runs).

    Raises:
        SweepError: If a confirmation was started with another ``top_k`` or ``seeds``.
    """
    confirm = config.search.confirm
    assert confirm is not None
    saved = saved_plan(location)
    if saved is None:
        plan = plan_confirmation(table, config)
        if plan.points:
            location.child(CONFIRM_DIR).write_bytes(POINTS_FILE, plan.to_json())
        return plan
    if (saved.top_k, saved.seeds) != (confirm.top_k, confirm.seeds):
        raise SweepError(
            f"the confirmation of {config.name!r} was started with top_k={saved.top_k}, seeds={saved.seeds} "
            f"({location.uri}/{CONFIRM_DIR}/{POINTS_FILE}): resume it with those (search.confirm, or "
            f"`sweeper confirm --top-k {saved.top_k} --seeds {saved.seeds}`); it cannot change once started"
        )
    return saved


def saved_plan(location: SweepLocation) -> ConfirmationPlan | None:
    """The confirmation saved in the sweep at ``location``; None when none was started.

    Raises:
        SweepError: If ``confirm/points.json`` is damaged.
    """
    where = location.child(CONFIRM_DIR)
    if not where.is_file(POINTS_FILE):
        return None
    try:
        data = json.loads(where.read_bytes(POINTS_FILE))
        return ConfirmationPlan(
            top_k=int(data["top_k"]),
            seeds=int(data["seeds"]),
            rule=str(data["rule"]),
            configurations=[dict(values) for values in data["configurations"]],
            points=[dict(point) for point in data["points"]],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise SweepError(
            f"{where.uri}/{POINTS_FILE}: damaged ({type(exc).__name__}: {exc}): restore it from a backup, or delete "
            f"{where.uri} and confirm again (its trials are lost)"
        ) from None
