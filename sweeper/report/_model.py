"""What a selection report shows, before any formatting: one sweep's trials, each rule's pick,
the picks' oracle accuracies and gaps with their seed uncertainty, and the rank-accuracy
correlations (computed once)."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweeper.config import SweeperConfig
from sweeper.names import (
    CONFIRM_PHASE,
    OK,
    OOD_MEAN,
    ORACLE_SKIPPED,
    PHASE,
    RANKME_EMBEDDING,
    RANKME_PROTOTYPES,
    RANKME_REPRESENTATION,
    RANKME_SELECTION_METRICS,
    UNFINISHED_STATUSES,
    is_eligible,
    is_metric_key,
    label_free_key,
    oracle_key,
)
from sweeper.report._seeds import (
    N_SEEDS,
    SeedCube,
    bootstrap_means,
    contains_zero,
    kendall_tau_b,
    percentile_interval,
    seed_cube,
    seed_summary,
)
from sweeper.selection import Pick, gap_to_oracle, select_all, select_max

# The RankMe columns a trial may report, in the order the tables and correlations list them.
RANK_COLUMNS = (RANKME_EMBEDDING, RANKME_REPRESENTATION, RANKME_PROTOTYPES)
ALPHA_REQ = label_free_key("alpha_req")
# The α-ReQ rule's criterion as a "higher is better" score, for the correlations.
ALPHA_REQ_SCORE = f"{ALPHA_REQ}: -abs(α - 1)"
RULE_LABELS = {
    "oracle/linear": "oracle (linear probe, labels)",
    "oracle/knn": "oracle (k-NN, labels)",
    "oracle/ood": "oracle (OOD mean, labels)",
    "rankme/max": "RankMe max",
    "rankme/plateau": "RankMe plateau",
    "rankme/noise_plateau": "RankMe noise-aware plateau (tolerance ≥ seed spread)",
    "rank_gate/lidar": "RankMe gate (≥ 75 % of max) → LiDAR max",
    "rank_gate/representation": "RankMe gate (≥ 75 % of max) → RankMe-representation max",
    "consensus/borda": "consensus (Borda count of the label-free metrics)",
    "alpha_req/band": "α-ReQ band (closest to 1)",
    "self_clustering/min": "self-clustering min",
}
# selection.rule -> the rule keys of its pick, the first one present is the headline.
HEADLINE_RULES: dict[str, tuple[str, ...]] = {
    "max": ("rankme/max",),
    "plateau": ("rankme/plateau",),
    "noise_plateau": ("rankme/noise_plateau",),
    "rank_gate": ("rank_gate/lidar", "rank_gate/representation"),
    "consensus": ("consensus/borda",),
}
CORRELATION_COLUMNS = [
    "metric",
    "oracle",
    "over",
    "n",
    "kendall_tau",
    "tau_low",
    "tau_high",
    "kendall_p",
    "spearman_rho",
    "spearman_p",
]
OVER_CONFIGURATIONS, OVER_TRIALS = "configurations", "trials"


def params_of(table: pd.DataFrame, config: SweeperConfig) -> list[str]:
    """The hyperparameter columns of the table (searched keys, plus ``seed`` for repeats)."""
    keys = list(config.search.space)
    return keys + (["seed"] if "seed" in table.columns else [])


def id_dataset(config: SweeperConfig) -> str:
    """The name the in-distribution oracle metrics carry (``oracle/linear/<name>``)."""
    return config.data.display_name


def select(table: pd.DataFrame, config: SweeperConfig) -> dict[str, Pick]:
    """Every standard rule's pick (see :func:`sweeper.selection.select_all`)."""
    return select_all(
        table,
        params=params_of(table, config),
        selection_param=config.selection.param,
        tolerance=config.selection.tolerance,
        order=config.selection.order,
        label_free=config.evaluation.label_free,
        id_dataset=id_dataset(config),
    )


def rules_by_trial(picks: Mapping[str, Pick]) -> dict[str, list[str]]:
    """``{trial_id: [rules that picked it]}`` for the ``sweeper.selected_by`` tags."""
    chosen: dict[str, list[str]] = {}
    for rule, pick in picks.items():
        for trial_id in pick.trial_ids:
            chosen.setdefault(trial_id, []).append(rule)
    return chosen


def rule_label(rule: str) -> str:
    """Human name of a rule key (``rankme/plateau`` -> ``RankMe plateau``)."""
    if rule in RULE_LABELS:
        return RULE_LABELS[rule]
    metric, _, kind = rule.partition("/")
    return f"{metric} {kind}".strip()


@dataclass(frozen=True)
class PickGap:
    """A rule's pick on one accuracy column, with the uncertainty its seeds give.

    Attributes:
        accuracy: Mean over the picked configuration's seeds.
        std: Sample std (``ddof = 1``) over those seeds; NaN with one seed.
        gap: ``accuracy`` minus the oracle configuration's mean (``<= 0``; NaN when unknown).
        low, high: The gap's 95 % paired-bootstrap interval over seeds (see
            :mod:`sweeper.report._seeds`); NaN for a single-seed sweep.
        n_seeds: Seeds of the picked configuration (its eligible trials).
        is_oracle: The pick is the oracle's own configuration (its gap is 0 in every replicate).
        replicates: The gap in each bootstrap replicate; None for a single-seed sweep.
    """

    accuracy: float
    std: float = math.nan
    gap: float = math.nan
    low: float = math.nan
    high: float = math.nan
    n_seeds: int = 0
    is_oracle: bool = False
    replicates: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def within_noise(self) -> bool | None:
        """The 95 % interval contains 0: the gap is within the seeds' noise (None: unknown)."""
        return contains_zero(self.low, self.high)


@dataclass(frozen=True, eq=False)
class SweepReport:
    """One sweep as the reports see it; build it with :meth:`build`.

    Attributes:
        config: The sweep's config (its name, searched space and selection settings).
        table: The trial table (``trials.csv``).
        picks: Each rule's pick (:meth:`build` applies :func:`select`).
        spectra: ``{trial_id: singular values}`` of the trials' final embeddings, descending.
        directory: Where the sweep lives: where :func:`~sweeper.report.write_report` writes,
            and what comparisons show.
    """

    config: SweeperConfig
    table: pd.DataFrame
    picks: Mapping[str, Pick] = field(default_factory=dict)
    spectra: Mapping[str, Sequence[float]] = field(default_factory=dict)
    directory: Path | None = None

    @classmethod
    def build(
        cls,
        config: SweeperConfig,
        table: pd.DataFrame,
        *,
        spectra: Mapping[str, Sequence[float]] | None = None,
        directory: Path | None = None,
    ) -> SweepReport:
        """The report of ``table`` with every standard rule applied."""
        return cls(config, table, select(table, config), dict(spectra or {}), directory)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def headline(self) -> tuple[str, Pick | None]:
        """The rule ``selection.rule`` names (:data:`HEADLINE_RULES`: ``rankme/max``,
        ``rankme/plateau``, ``rankme/noise_plateau``, ``rank_gate/lidar`` or, without LiDAR,
        ``rank_gate/representation``, ``consensus/borda``) and its pick: the one configuration
        the sweep recommends; None while no trial qualifies."""
        keys = HEADLINE_RULES[self.config.selection.rule]
        rule = next((key for key in keys if key in self.picks), keys[0])
        return rule, self.picks.get(rule)

    @property
    def param(self) -> str | None:
        """The hyperparameter plots run along: the plateau's, else the first searched."""
        return self.config.selection.param or next(iter(self.config.search.space), None)

    @property
    def rank_metric(self) -> str | None:
        """The RankMe column the rules read (clipped when available)."""
        pick = self.picks.get("rankme/max")
        if pick is not None:
            return pick.metric
        return next((c for c in RANKME_SELECTION_METRICS if c in self.table.columns), None)

    @property
    def id_metric(self) -> str | None:
        """The in-distribution accuracy of the Table-1 summary: linear probe, else k-NN."""
        name = id_dataset(self.config)
        candidates = (oracle_key("linear", name), oracle_key("knn", name))
        return next((c for c in candidates if c in self.table.columns), None)

    @property
    def oracle_metrics(self) -> list[str]:
        """Every oracle column: in-distribution first, then each OOD dataset, then the mean."""
        name = id_dataset(self.config)

        def order(column: str) -> tuple[int, int, str]:
            where = 0 if column.endswith(f"/{name}") else 2 if column == OOD_MEAN else 1
            return (where, 0 if column.startswith("oracle/linear/") else 1, column)

        return sorted((c for c in self.table.columns if c.startswith("oracle/")), key=order)

    @functools.cached_property
    def correlations(self) -> pd.DataFrame:
        """Kendall τ and Spearman ρ of each label-free metric with each oracle accuracy
        (:func:`correlations`), computed on first use and kept: treat it as read-only."""
        return _rank_accuracy_correlations(self)

    @functools.cached_property
    def before_confirmation(self) -> SweepReport | None:
        """The report of the search's trials alone (the picks before ``search.confirm``'s
        trials) when the sweep has confirmation trials; None otherwise."""
        if PHASE not in self.table.columns or not (self.table[PHASE] == CONFIRM_PHASE).any():
            return None
        search = self.table[self.table[PHASE] != CONFIRM_PHASE].reset_index(drop=True)
        return SweepReport.build(self.config, search, spectra=self.spectra, directory=self.directory)

    def status_counts(self) -> dict[str, int]:
        """``{status: number of trials}``."""
        if not len(self.table):
            return {}
        return {str(k): int(v) for k, v in self.table["status"].value_counts().sort_index().items()}

    def expected_trials(self) -> int:
        """How many trials the sweep will have: the grid's size times ``num_samples``, or
        ``num_samples`` for Optuna/random search (Tune creates trials as it goes)."""
        search = self.config.search
        if search.algorithm != "grid":
            return search.num_samples
        return math.prod(len(spec.values or ()) for spec in search.space.values()) * search.num_samples

    def not_started(self) -> int:
        """Trials Tune has not created yet."""
        return max(0, self.expected_trials() - len(self.table))

    def unfinished(self) -> int:
        """Trials still running, pending, or not started yet."""
        waiting = sum(n for status, n in self.status_counts().items() if status in UNFINISHED_STATUSES)
        return waiting + self.not_started()

    @property
    def oracle_skipped(self) -> str | None:
        """Why the labelled probes did not run (a data set without labels or without a test
        split), as the trials reported it; None when they ran or were not configured."""
        if ORACLE_SKIPPED not in self.table.columns:
            return None
        reasons = self.table[ORACLE_SKIPPED].dropna()
        return str(reasons.iloc[0]) if len(reasons) else None

    def progress_note(self) -> str | None:
        """A sentence for a partly finished sweep, None when every trial has ended."""
        counts = self.status_counts()
        waiting = self.unfinished()
        if not waiting:
            return None
        states = [f"{counts[s]} {s}" for s in UNFINISHED_STATUSES if counts.get(s)]
        if self.not_started():
            states.append(f"{self.not_started()} not started")
        total = len(self.table) + self.not_started()
        return (
            f"Partly finished: {waiting} of {total} trials unfinished ({', '.join(states)}); the picks "
            f"and correlations use the {counts.get(OK, 0)} trials finished with status ok."
        )

    def eligible(self) -> pd.DataFrame:
        """The trials that finished with ``status=ok``."""
        if not len(self.table):
            return self.table
        status = self.table["status"].astype(str).str.strip().str.lower()
        return self.table[status.map(is_eligible).astype(bool)]

    @functools.cached_property
    def seeds(self) -> SeedCube:
        """The eligible trials by configuration and seed, every metric and accuracy column."""
        columns = [c for c in self.table.columns if is_metric_key(str(c))]
        return seed_cube(self.table, params=params_of(self.table, self.config), columns=columns)

    @property
    def n_seeds(self) -> int:
        """``S``, the distinct seeds of the eligible trials; 1 or less: no uncertainty known."""
        return self.seeds.n_seeds

    @functools.cached_property
    def configurations(self) -> pd.DataFrame:
        """Mean and std over seeds of every column, per configuration (:func:`seed_summary`)."""
        return seed_summary(self.seeds)

    @functools.cached_property
    def bootstrap(self) -> np.ndarray | None:
        """The paired bootstrap replicates of every configuration's means (``(B, C, K)``, see
        :func:`~sweeper.report._seeds.bootstrap_means`); None for a single-seed sweep."""
        return bootstrap_means(self.seeds) if self.n_seeds > 1 else None

    def seeds_of(self, pick: Pick) -> int:
        """How many seeds the picked configuration has (its eligible trials' distinct seeds)."""
        row = self.seeds.config_index(pick.trial_ids)
        return 0 if row is None else int(self.configurations.at[row, N_SEEDS])

    def pick_gaps(self, metric: str) -> dict[str, PickGap]:
        """Each rule's pick on ``metric``: seed mean ± std, gap to the oracle's configuration
        (the picks as made on all seeds, held fixed) and the gap's bootstrap interval.
        Computed once per metric; treat the result as read-only."""
        if metric not in self._pick_gaps:
            self._pick_gaps[metric] = self._compute_pick_gaps(metric)
        return self._pick_gaps[metric]

    @functools.cached_property
    def _pick_gaps(self) -> dict[str, dict[str, PickGap]]:
        return {}

    def _compute_pick_gaps(self, metric: str) -> dict[str, PickGap]:
        if metric not in self.table.columns or not self.picks:
            return {rule: PickGap(math.nan) for rule in self.picks}
        params = params_of(self.table, self.config)
        gaps = gap_to_oracle(self.table, self.picks, oracle_metric=metric, params=params)
        cube, summary, replicates = self.seeds, self.configurations, self.bootstrap
        oracle = select_max(self.table, metric=metric, params=params)
        best = cube.config_index(oracle.trial_ids) if oracle is not None else None
        column = cube.column_index(metric)
        result = {}
        for rule, pick in self.picks.items():
            row = cube.config_index(pick.trial_ids)
            if row is None:
                result[rule] = PickGap(math.nan)
                continue
            gap = PickGap(
                accuracy=float(summary.at[row, metric]),
                std=float(summary.at[row, f"{metric} std"]),
                gap=gaps[rule],
                n_seeds=int(summary.at[row, N_SEEDS]),
                is_oracle=row == best,
            )
            if replicates is not None and best is not None and column is not None and math.isfinite(gap.gap):
                draws = replicates[:, row, column] - replicates[:, best, column]
                low, high = percentile_interval(draws)
                gap = replace(gap, low=low, high=high, replicates=draws)
            result[rule] = gap
        return result


def correlations(report: SweepReport) -> pd.DataFrame:
    """Kendall τ and Spearman ρ between each label-free metric and each oracle accuracy.

    With several seeds (:attr:`SweepReport.n_seeds` > 1) one point per *configuration* (its
    seed means), and Kendall τ gets the 95 % paired-bootstrap interval over seeds (τ
    recomputed on each replicate's means, see :mod:`sweeper.report._seeds`); with one seed,
    one point per eligible trial (``status=ok``) and no interval. Pairs with a non-finite
    value are dropped. Label-free metrics: RankMe of the embedding, of the representation and
    of the prototypes, each metric of ``evaluation.label_free``, and ``-|alpha_req - 1|`` (the
    α-ReQ rule's criterion, of the seed mean). Fewer than 3 pairs or a constant column give
    NaN. Computed once per report (:attr:`SweepReport.correlations`); the frame returned is
    that one.

    Returns:
        Columns ``metric``, ``oracle``, ``over`` (``configurations`` or ``trials``), ``n``,
        ``kendall_tau``, ``tau_low``, ``tau_high``, ``kendall_p``, ``spearman_rho``,
        ``spearman_p``; one row per (metric, oracle) pair.
    """
    return report.correlations


def summary_rows(report: SweepReport) -> list[dict[str, Any]]:
    """One row per rule: its pick, the picked configuration's oracle accuracies (seed mean,
    ``std <metric>`` over seeds) and gaps, then ``gap_low``, ``gap_high`` and ``within_noise``:
    the 95 % interval of the gap on the in-distribution accuracy (:attr:`SweepReport.id_metric`)
    and whether it contains 0 (NaN/None with one seed), and ``n_seeds``, the pick's seeds."""
    scores = {metric: report.pick_gaps(metric) for metric in report.oracle_metrics}
    headline = scores.get(report.id_metric or "", {})
    rows = []
    for rule, pick in report.picks.items():
        row: dict[str, Any] = {
            "rule": rule,
            "trials": ",".join(pick.trial_ids),
            **{key: pick.params.get(key) for key in report.config.search.space},
            "metric": pick.metric,
            "value": pick.value,
        }
        for metric, by_rule in scores.items():
            gap = by_rule[rule]
            row[metric], row[f"std {metric}"], row[f"gap {metric}"] = gap.accuracy, gap.std, gap.gap
        main = headline.get(rule, PickGap(math.nan))
        row |= {
            "gap_low": main.low,
            "gap_high": main.high,
            "within_noise": main.within_noise,
            "n_seeds": report.seeds_of(pick),
        }
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- correlations


def _rank_accuracy_correlations(report: SweepReport) -> pd.DataFrame:
    """The frame :func:`correlations` documents."""
    over_configurations = report.n_seeds > 1
    if over_configurations:
        points = report.configurations[list(report.seeds.columns)]
    else:
        points = report.eligible()
    numeric = {c: pd.to_numeric(points[c], errors="coerce") for c in points.columns if is_metric_key(str(c))}
    configured = [label_free_key(name) for name in report.config.evaluation.label_free]
    metrics = {name: numeric[name] for name in [*RANK_COLUMNS, *configured] if name in numeric}
    if ALPHA_REQ in metrics:
        metrics[ALPHA_REQ_SCORE] = -(numeric[ALPHA_REQ] - 1.0).abs()
    rows = []
    for metric, x in metrics.items():
        for oracle in report.oracle_metrics:
            xs, ys = x.to_numpy(dtype=float), numeric[oracle].to_numpy(dtype=float)
            keep = np.isfinite(xs) & np.isfinite(ys)
            tau, rho = _rank_coefficients(xs[keep], ys[keep])
            known = over_configurations and math.isfinite(tau[0])
            low, high = _tau_interval(report, metric, oracle) if known else (math.nan, math.nan)
            rows.append(
                {
                    "metric": metric,
                    "oracle": oracle,
                    "over": OVER_CONFIGURATIONS if over_configurations else OVER_TRIALS,
                    "n": int(keep.sum()),
                    "kendall_tau": tau[0],
                    "tau_low": low,
                    "tau_high": high,
                    "kendall_p": tau[1],
                    "spearman_rho": rho[0],
                    "spearman_p": rho[1],
                }
            )
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def _tau_interval(report: SweepReport, metric: str, oracle: str) -> tuple[float, float]:
    """95 % paired-bootstrap interval of τ over configurations: τ of each replicate's means."""
    replicates, cube = report.bootstrap, report.seeds
    source = ALPHA_REQ if metric == ALPHA_REQ_SCORE else metric
    x_column, y_column = cube.column_index(source), cube.column_index(oracle)
    if replicates is None or x_column is None or y_column is None:
        return math.nan, math.nan
    xs = replicates[:, :, x_column]
    if metric == ALPHA_REQ_SCORE:
        xs = -np.abs(xs - 1.0)
    return percentile_interval(kendall_tau_b(xs, replicates[:, :, y_column]))


def _rank_coefficients(xs: np.ndarray, ys: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """``((kendall τ, p), (spearman ρ, p))`` of finite pairs; NaN for < 3 pairs or a constant."""
    if len(xs) < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return (math.nan, math.nan), (math.nan, math.nan)
    from scipy import stats  # scipy is slow to import; only reports need it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tau = stats.kendalltau(xs, ys)
        rho = stats.spearmanr(xs, ys)
    return (float(tau[0]), float(tau[1])), (float(rho[0]), float(rho[1]))
