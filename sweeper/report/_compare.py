"""What a comparison of several sweeps shows, before any formatting: each (sweep, rule) pick
with its accuracies and gaps (:func:`comparison_rows`), and per rule the gap over the sweeps -
mean with its bootstrap interval, worst, wins/ties/losses against RankMe's plateau rule
(:func:`rule_gaps`)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from sweeper.names import OOD_MEAN, oracle_key
from sweeper.report._model import RULE_LABELS, PickGap, SweepReport, id_dataset, rule_label
from sweeper.report._seeds import mean_replicates, percentile_interval

GapKind = Literal["id", "knn", "ood"]
GAP_KINDS: tuple[GapKind, ...] = ("id", "knn", "ood")
REFERENCE_RULE = "rankme/plateau"
# Two gaps closer than this are a tie (the same accuracy, up to float rounding).
TIE_TOLERANCE = 1e-9
# The oracle and RankMe rules come first in comparisons, in this order.
_LEADING_RULES = tuple(rule for rule in RULE_LABELS if rule.startswith(("oracle/", "rankme/")))


def gap_metric(report: SweepReport, kind: GapKind) -> str | None:
    """The accuracy column of a gap kind: the in-distribution linear probe (``id``, else
    k-NN), the in-distribution k-NN (``knn``), the OOD mean (``ood``); None when absent."""
    if kind == "id":
        return report.id_metric
    column = oracle_key("knn", id_dataset(report.config)) if kind == "knn" else OOD_MEAN
    return column if column in report.table.columns else None


def comparison_rows(reports: Sequence[SweepReport]) -> list[dict[str, Any]]:
    """Long form of the comparison: one row per (sweep, rule) with the in-distribution, k-NN
    and OOD-mean accuracy of the pick (seed mean, ``<kind>_std`` over seeds) and the gap of
    each to its oracle (fractions); ``gap_low``, ``gap_high``, ``within_noise``: the 95 %
    paired-bootstrap interval of the in-distribution gap and whether it contains 0;
    ``n_seeds``: the pick's seeds."""
    rows = []
    for report in reports:
        metrics = {kind: gap_metric(report, kind) for kind in GAP_KINDS}
        scores = {kind: report.pick_gaps(metric) if metric else {} for kind, metric in metrics.items()}
        for rule, pick in report.picks.items():
            row: dict[str, Any] = {
                "sweep": report.name,
                "method": report.config.method.name,
                "dataset": id_dataset(report.config),
                "rule": rule,
                "label": rule_label(rule),
                "trials": ",".join(pick.trial_ids),
                "params": json.dumps(pick.params, default=str),
                "metric": pick.metric,
                "value": pick.value,
                "id_metric": metrics["id"],
            }
            for kind in GAP_KINDS:
                gap = scores[kind].get(rule, PickGap(math.nan))
                row[f"{kind}_accuracy"], row[f"{kind}_std"], row[f"{kind}_gap"] = gap.accuracy, gap.std, gap.gap
            main = scores["id"].get(rule, PickGap(math.nan))
            row |= {
                "gap_low": main.low,
                "gap_high": main.high,
                "within_noise": main.within_noise,
                "n_seeds": report.seeds_of(pick),
            }
            rows.append(row)
    return rows


@dataclass(frozen=True)
class RuleGaps:
    """One rule over the sweeps of a comparison, on one gap kind.

    Attributes:
        rule: The rule's key (``rankme/plateau``, ...).
        gaps: ``{sweep column: the pick's gap there}`` for the sweeps where the rule picked.
        mean: Mean of the finite gaps over the sweeps (NaN without one).
        low, high: Its 95 % interval: the per-sweep bootstrap replicates averaged replicate
            by replicate, then the percentile interval; NaN when a sweep in the mean has one
            seed (no uncertainty known there).
        worst: The lowest gap, and ``worst_sweep`` the sweep where it occurs.
        wins, ties, losses: Over the sweeps where both have a gap, against RankMe's plateau
            rule (tie: the same configuration, or gaps within :data:`TIE_TOLERANCE`); None for
            the oracle rules and for the plateau rule itself.
    """

    rule: str
    gaps: dict[str, PickGap]
    mean: float
    low: float
    high: float
    worst: float
    worst_sweep: str | None
    wins: int | None = None
    ties: int | None = None
    losses: int | None = None

    @property
    def n_sweeps(self) -> int:
        """Sweeps with a finite gap: the ones in the mean."""
        return sum(math.isfinite(g.gap) for g in self.gaps.values())


def rule_gaps(reports: Sequence[SweepReport], *, kind: GapKind = "id") -> list[RuleGaps]:
    """Each rule's gaps over the sweeps, ranked by mean gap (best first; ties and rules
    without a finite gap in the comparison's usual order: oracle, RankMe, the others)."""
    names = unique_names(reports)
    by_sweep: dict[str, dict[str, PickGap]] = {}
    trials: dict[str, dict[str, tuple[str, ...]]] = {}
    for name, report in zip(names, reports, strict=True):
        metric = gap_metric(report, kind)
        by_sweep[name] = report.pick_gaps(metric) if metric else {}
        trials[name] = {rule: pick.trial_ids for rule, pick in report.picks.items()}
    order = rule_order([rule for name in names for rule in trials[name]])
    ranked = [_rule_gaps(rule, names, by_sweep, trials) for rule in order]
    position = {rule: index for index, rule in enumerate(order)}
    return sorted(ranked, key=lambda r: (-r.mean if math.isfinite(r.mean) else math.inf, position[r.rule]))


def _rule_gaps(
    rule: str,
    names: Sequence[str],
    by_sweep: dict[str, dict[str, PickGap]],
    trials: dict[str, dict[str, tuple[str, ...]]],
) -> RuleGaps:
    gaps = {name: by_sweep[name][rule] for name in names if rule in by_sweep[name]}
    finite = {name: gap for name, gap in gaps.items() if math.isfinite(gap.gap)}
    mean = float(np.mean([g.gap for g in finite.values()])) if finite else math.nan
    low = high = math.nan
    draws = [g.replicates for g in finite.values()]
    if finite and all(d is not None for d in draws):
        low, high = percentile_interval(mean_replicates([d for d in draws if d is not None]))
    worst_sweep = min(finite, key=lambda name: finite[name].gap) if finite else None
    worst = finite[worst_sweep].gap if worst_sweep is not None else math.nan
    result = RuleGaps(rule, gaps, mean, low, high, worst, worst_sweep)
    if rule.startswith("oracle/") or rule == REFERENCE_RULE:
        return result
    wins = ties = losses = 0
    for name, gap in finite.items():
        reference = by_sweep[name].get(REFERENCE_RULE)
        if reference is None or not math.isfinite(reference.gap):
            continue
        same = trials[name][rule] == trials[name][REFERENCE_RULE]
        if same or abs(gap.gap - reference.gap) < TIE_TOLERANCE:
            ties += 1
        elif gap.gap > reference.gap:
            wins += 1
        else:
            losses += 1
    return RuleGaps(rule, gaps, mean, low, high, worst, worst_sweep, wins, ties, losses)


def rule_order(rules: Sequence[str]) -> list[str]:
    """Oracle rules, then RankMe's, then the other label-free rules as they first appear."""
    seen = list(dict.fromkeys(rules))
    return [rule for rule in _LEADING_RULES if rule in seen] + [rule for rule in seen if rule not in _LEADING_RULES]


def unique_names(reports: Sequence[SweepReport]) -> list[str]:
    """The sweeps' names as comparison columns: a repeated name gets `` (2)``, `` (3)``, ..."""
    names: list[str] = []
    for report in reports:
        name, index = report.name, 2
        while name in names:
            name, index = f"{report.name} ({index})", index + 1
        names.append(name)
    return names
