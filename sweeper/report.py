"""Selection reports: which trial each rule picks, how far it is from the labelled oracle, how
well each label-free metric ranks the trials, and the plots that show it.

One sweep (:func:`write_report`, at the end of ``sweeper run`` and by ``sweeper compare``),
files in the sweep directory:

* ``report.md`` - the trial table, each rule's pick with its accuracies and gap to the oracle,
  Kendall τ / Spearman ρ between every label-free metric and every oracle accuracy;
* ``report.csv`` - one row per rule (accuracies and gaps as fractions, not percent);
* ``report.json`` - selections, correlations, trial counts and plot files;
* ``rankme_vs_param.png`` - RankMe (and each other label-free metric with a rule) along the
  swept hyperparameter, with the plateau band, each rule's pick and the oracle accuracy;
* ``accuracy_vs_rankme.png`` - oracle accuracy against RankMe, one point per trial;
* ``spectra.png`` - singular-value spectra of the picked trials (log-log).

Several sweeps (:func:`write_comparison`, ``sweeper compare A B ...``): ``compare.md`` (the
RankMe paper's Table 1: rows = selection rules, columns = sweeps, cells = accuracy of the pick
and its gap to the oracle), ``compare.csv`` (long form), ``compare.json`` and the three plots
with every sweep in them.

A sweep may be partly finished: picks and correlations use the trials that finished with
``status=ok`` and every output says how many are still running, pending or not yet created.

Selection rules themselves live in :mod:`sweeper.selection`; this module only formats them.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweeper.config import SweeperConfig
from sweeper.selection import Pick, aggregate_seeds, gap_to_oracle, plateau_threshold, select_all
from sweeper.storage import write_atomic

__all__ = [
    "SweepReport",
    "comparison_rows",
    "correlations",
    "format_comparison",
    "format_summary",
    "id_dataset",
    "rule_label",
    "rules_by_trial",
    "select",
    "summary_rows",
    "write_atomic",
    "write_comparison",
    "write_report",
]

UNFINISHED = ("running", "pending")
_RANKS = ("rankme/embedding_clipped", "rankme/embedding")
_RANK_COLUMNS = ("rankme/embedding", "rankme/representation", "rankme/prototypes")
_OOD = "oracle/linear/ood_mean"
_ALPHA = "label_free/alpha_req"
_ALPHA_SCORE = "label_free/alpha_req: -abs(α - 1)"
_RULE_LABELS = {
    "oracle/linear": "oracle (linear probe, labels)",
    "oracle/knn": "oracle (k-NN, labels)",
    "oracle/ood": "oracle (OOD mean, labels)",
    "rankme/max": "RankMe max",
    "rankme/plateau": "RankMe plateau",
    "alpha_req/band": "α-ReQ band (closest to 1)",
    "self_clustering/min": "self-clustering min",
}
_RULE_ORDER = tuple(_RULE_LABELS)  # the oracle and RankMe rules come first, in this order
_PLOT_STYLE = {  # rule -> (marker, colour)
    "oracle/linear": ("^", "tab:red"),
    "oracle/knn": ("v", "tab:pink"),
    "oracle/ood": ("<", "tab:brown"),
    "rankme/max": ("D", "tab:purple"),
    "rankme/plateau": ("*", "tab:green"),
}


# --------------------------------------------------------------------------- one sweep


def params_of(table: pd.DataFrame, config: SweeperConfig) -> list[str]:
    """The hyperparameter columns of the table (searched keys, plus ``seed`` for repeats)."""
    keys = list(config.search.space)
    return keys + (["seed"] if "seed" in table.columns else [])


def id_dataset(config: SweeperConfig) -> str:
    """The name the in-distribution oracle metrics carry (``oracle/linear/<name>``)."""
    data = config.data
    if data.dataset == "imagefolder" and data.root is not None:
        return Path(data.root).expanduser().name
    return data.dataset


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
    if rule in _RULE_LABELS:
        return _RULE_LABELS[rule]
    metric, _, kind = rule.partition("/")
    return f"{metric} {kind}".strip()


@dataclass(frozen=True, eq=False)
class SweepReport:
    """One sweep as the reports see it.

    Attributes:
        config: The sweep's config (its name, searched space and selection settings).
        table: The trial table (``trials.csv``).
        picks: Each rule's pick (:meth:`build` applies :func:`select`).
        spectra: ``{trial_id: singular values}`` of the trials' final embeddings, descending.
        directory: Where the sweep lives (shown in comparisons).
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
    def param(self) -> str | None:
        """The hyperparameter plots run along: the plateau's, else the first searched."""
        return self.config.selection.param or next(iter(self.config.search.space), None)

    @property
    def rank_metric(self) -> str | None:
        """The RankMe column the rules read (clipped when available)."""
        pick = self.picks.get("rankme/max")
        if pick is not None:
            return pick.metric
        return next((c for c in _RANKS if c in self.table.columns), None)

    @property
    def id_metric(self) -> str | None:
        """The in-distribution accuracy of the Table-1 summary: linear probe, else k-NN."""
        name = id_dataset(self.config)
        return next((c for c in (f"oracle/linear/{name}", f"oracle/knn/{name}") if c in self.table.columns), None)

    @property
    def oracle_metrics(self) -> list[str]:
        """Every oracle column: in-distribution first, then each OOD dataset, then the mean."""
        name = id_dataset(self.config)

        def order(column: str) -> tuple[int, int, str]:
            where = 0 if column.endswith(f"/{name}") else 2 if column == _OOD else 1
            return (where, 0 if column.startswith("oracle/linear/") else 1, column)

        return sorted((c for c in self.table.columns if c.startswith("oracle/")), key=order)

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
        waiting = sum(n for status, n in self.status_counts().items() if status in UNFINISHED)
        return waiting + self.not_started()

    def progress_note(self) -> str | None:
        """A sentence for a partly finished sweep, None when every trial has ended."""
        counts = self.status_counts()
        waiting = self.unfinished()
        if not waiting:
            return None
        states = [f"{counts[s]} {s}" for s in UNFINISHED if counts.get(s)]
        if self.not_started():
            states.append(f"{self.not_started()} not started")
        total = len(self.table) + self.not_started()
        return (
            f"Partly finished: {waiting} of {total} trials unfinished ({', '.join(states)}); the picks "
            f"and correlations use the {counts.get('ok', 0)} trials finished with status ok."
        )

    def eligible(self) -> pd.DataFrame:
        """The trials that finished with ``status=ok``."""
        if not len(self.table):
            return self.table
        return self.table[self.table["status"].astype(str).str.strip().str.lower() == "ok"]

    def pick_scores(self, metric: str) -> dict[str, tuple[float, float]]:
        """``{rule: (seed-averaged metric of the pick, gap to the best)}``; NaN when unknown."""
        if metric not in self.table.columns or not self.picks:
            return {rule: (math.nan, math.nan) for rule in self.picks}
        params = params_of(self.table, self.config)
        gaps = gap_to_oracle(self.table, self.picks, oracle_metric=metric, params=params)
        configs = aggregate_seeds(self.table, params=params)
        values = dict(zip(map(tuple, configs["trial_ids"]), configs[metric], strict=True))
        return {rule: (float(values.get(pick.trial_ids, math.nan)), gaps[rule]) for rule, pick in self.picks.items()}


def summary_rows(table: pd.DataFrame, picks: Mapping[str, Pick], config: SweeperConfig) -> list[dict[str, Any]]:
    """One row per rule: its pick, the picked configuration's oracle accuracies and gaps."""
    report = SweepReport(config, table, picks)
    scores = {metric: report.pick_scores(metric) for metric in report.oracle_metrics}
    rows = []
    for rule, pick in picks.items():
        row: dict[str, Any] = {
            "rule": rule,
            "trials": ",".join(pick.trial_ids),
            **{key: pick.params.get(key) for key in config.search.space},
            "metric": pick.metric,
            "value": pick.value,
        }
        for metric, by_rule in scores.items():
            row[metric], row[f"gap {metric}"] = by_rule[rule]
        rows.append(row)
    return rows


def correlations(report: SweepReport) -> pd.DataFrame:
    """Kendall τ and Spearman ρ between each label-free metric and each oracle accuracy.

    Over the eligible trials (``status=ok``), one point per trial, pairs with a non-finite
    value dropped. Label-free metrics: RankMe of the embedding, of the representation and of
    the prototypes, each metric of ``evaluation.label_free``, and ``-|alpha_req - 1|`` (the
    α-ReQ rule's criterion). Fewer than 3 pairs or a constant column give NaN.

    Returns:
        Columns ``metric``, ``oracle``, ``n``, ``kendall_tau``, ``kendall_p``,
        ``spearman_rho``, ``spearman_p``; one row per (metric, oracle) pair.
    """
    from scipy import stats

    eligible = report.eligible()
    numeric = {c: pd.to_numeric(eligible[c], errors="coerce") for c in eligible.columns if "/" in c}
    configured = [f"label_free/{name}" for name in report.config.evaluation.label_free]
    metrics = {name: numeric[name] for name in [*_RANK_COLUMNS, *configured] if name in numeric}
    if _ALPHA in metrics:
        metrics[_ALPHA_SCORE] = -(numeric[_ALPHA] - 1.0).abs()
    rows = []
    for metric, x in metrics.items():
        for oracle in report.oracle_metrics:
            y = numeric[oracle]
            keep = np.isfinite(x.to_numpy(dtype=float)) & np.isfinite(y.to_numpy(dtype=float))
            xs, ys = x.to_numpy(dtype=float)[keep], y.to_numpy(dtype=float)[keep]
            tau = rho = (math.nan, math.nan)
            if len(xs) >= 3 and np.ptp(xs) > 0 and np.ptp(ys) > 0:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tau = tuple(map(float, stats.kendalltau(xs, ys)))
                    rho = tuple(map(float, stats.spearmanr(xs, ys)))
            rows.append(
                {
                    "metric": metric,
                    "oracle": oracle,
                    "n": int(keep.sum()),
                    "kendall_tau": tau[0],
                    "kendall_p": tau[1],
                    "spearman_rho": rho[0],
                    "spearman_p": rho[1],
                }
            )
    columns = ["metric", "oracle", "n", "kendall_tau", "kendall_p", "spearman_rho", "spearman_p"]
    return pd.DataFrame(rows, columns=columns)


def format_summary(table: pd.DataFrame, picks: Mapping[str, Pick], config: SweeperConfig) -> str:
    """Markdown of one sweep: trials, each rule's pick with accuracies and gaps, correlations.

    Printed at the end of ``sweeper run``, by ``sweeper status`` and ``sweeper compare``.
    """
    report = SweepReport(config, table, picks)
    counts = report.status_counts()
    what = f"{config.method.name} on {id_dataset(config)}"
    if report.param:
        what += f", along {report.param}"
    states = [f"{n} {status}" for status, n in counts.items()]
    if report.not_started():
        states.append(f"{report.not_started()} not started")
    total = len(table) + report.not_started()
    lines = [f"## Sweep {config.name}: {what} ({total} trials: {', '.join(states) or 'none yet'})", ""]
    note = report.progress_note()
    if note:
        lines += [f"**{note}**", ""]
    if len(table):
        lines += ["### Trials", "", _markdown(table[_trial_columns(report)]), ""]
    if not picks:
        lines += ["No trial finished with status ok: nothing to select.", ""]
        return "\n".join(lines)

    lines += [
        "### Selections",
        "",
        "Oracle accuracy of each rule's pick (%, seed-averaged) and its gap to the best trial "
        "(points; 0 = as good as the labelled oracle).",
        "",
        _markdown(_selection_frame(report)),
        "",
    ]
    corr = correlations(report)
    if len(corr):
        lines += [
            f"### Rank-accuracy correlations ({len(report.eligible())} eligible trials)",
            "",
            "Kendall τ and Spearman ρ (p-value in brackets) of each label-free metric with each "
            "oracle accuracy, one point per trial with status ok.",
            "",
        ]
        for statistic, p_value, title in (
            ("kendall_tau", "kendall_p", "Kendall τ"),
            ("spearman_rho", "spearman_p", "Spearman ρ"),
        ):
            cells = corr.assign(cell=[_coefficient(r, p) for r, p in zip(corr[statistic], corr[p_value], strict=True)])
            pivot = cells.pivot(index="metric", columns="oracle", values="cell")
            pivot = pivot.loc[list(dict.fromkeys(corr["metric"])), list(dict.fromkeys(corr["oracle"]))]
            lines += [_markdown(pivot.reset_index().rename(columns={"metric": title})), ""]
    return "\n".join(lines)


def write_report(
    table: pd.DataFrame,
    picks: Mapping[str, Pick],
    config: SweeperConfig,
    directory: Path,
    *,
    spectra: Mapping[str, Sequence[float]] | None = None,
) -> list[Path]:
    """Write report.md/.csv/.json and the plots into ``directory``; returns the files written.

    ``spectra`` (``{trial_id: singular values}``) adds ``spectra.png``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    report = SweepReport(config, table, picks, dict(spectra or {}), directory)
    plots = [
        path
        for path in (
            _save_figure(_figure_along_param([report]), directory / "rankme_vs_param.png"),
            _save_figure(_figure_accuracy_vs_rankme([report]), directory / "accuracy_vs_rankme.png"),
            _save_figure(_figure_spectra([report]), directory / "spectra.png"),
        )
        if path is not None
    ]
    markdown = format_summary(table, picks, config)
    if plots:
        markdown += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    rows = summary_rows(table, picks, config)
    document = {
        "sweep": config.name,
        "directory": str(directory),
        "trials": len(table),
        "status": report.status_counts(),
        "unfinished": report.unfinished(),
        "selections": rows,
        "correlations": correlations(report).to_dict(orient="records"),
        "plots": [p.name for p in plots],
    }
    return [
        write_atomic(directory / "report.md", markdown),
        write_atomic(directory / "report.csv", pd.DataFrame(rows).to_csv(index=False)),
        write_atomic(directory / "report.json", _json(document)),
        *plots,
    ]


# --------------------------------------------------------------------------- several sweeps


def comparison_rows(reports: Sequence[SweepReport]) -> list[dict[str, Any]]:
    """Long form of the comparison: one row per (sweep, rule) with the in-distribution,
    k-NN and OOD-mean accuracy of the pick and the gap of each to its oracle (fractions)."""
    rows = []
    for report in reports:
        idn = id_dataset(report.config)
        kinds = {
            "id": report.id_metric,
            "knn": f"oracle/knn/{idn}" if f"oracle/knn/{idn}" in report.table.columns else None,
            "ood": _OOD if _OOD in report.table.columns else None,
        }
        scores = {kind: report.pick_scores(metric) if metric else {} for kind, metric in kinds.items()}
        for rule, pick in report.picks.items():
            row: dict[str, Any] = {
                "sweep": report.name,
                "method": report.config.method.name,
                "dataset": idn,
                "rule": rule,
                "label": rule_label(rule),
                "trials": ",".join(pick.trial_ids),
                "params": json.dumps(pick.params, default=str),
                "metric": pick.metric,
                "value": pick.value,
                "id_metric": kinds["id"],
            }
            for kind in kinds:
                accuracy, gap = scores[kind].get(rule, (math.nan, math.nan))
                row[f"{kind}_accuracy"], row[f"{kind}_gap"] = accuracy, gap
            rows.append(row)
    return rows


def format_comparison(reports: Sequence[SweepReport]) -> str:
    """Markdown of the Table-1-style comparison of several sweeps (rules x sweeps)."""
    names = _unique_names(reports)
    rows = [
        {**row, "column": name} for name, sweep in zip(names, reports, strict=True) for row in comparison_rows([sweep])
    ]
    lines = ["## Oracle vs label-free selection", ""]
    if not rows:
        return "\n".join([*lines, "No sweep has a trial finished with status ok.", ""])
    frame = pd.DataFrame(rows)
    rules = _rule_order(frame["rule"])
    has_ood = frame["ood_accuracy"].notna().any()

    def table_of(cell: Callable[[pd.Series], str], gap_column: str) -> str:
        body = []
        for rule in rules:
            row = {"selection rule": rule_label(rule)}
            picked = frame[frame["rule"] == rule].set_index("column")
            for name in names:
                row[name] = cell(picked.loc[name]) if name in picked.index else "-"
            gaps = picked[gap_column].to_numpy(dtype=float)
            gaps = gaps[np.isfinite(gaps)]
            row["mean gap"] = _points(float(gaps.mean()), signed=True) if gaps.size else "-"
            body.append(row)
        return _markdown(pd.DataFrame(body))

    def id_cell(row: pd.Series) -> str:
        text = f"{_points(row['id_accuracy'])} ({_points(row['id_gap'], signed=True)})"
        if has_ood and np.isfinite(row["ood_accuracy"]):
            text += f"; OOD {_points(row['ood_accuracy'])} ({_points(row['ood_gap'], signed=True)})"
        return text

    lines += [
        "Accuracy (%) of the configuration each rule picks, in-distribution linear probe"
        + ("; OOD = mean linear probe over the OOD datasets" if has_ood else "")
        + ". In brackets: the gap to the labelled oracle of that column, in points (0 = the "
        "oracle's accuracy). Mean gap: over the sweeps, in-distribution.",
        "",
        table_of(id_cell, "id_gap"),
        "",
    ]
    if frame["knn_accuracy"].notna().any():
        lines += [
            "k-NN accuracy (%) of each pick, in-distribution (gap to the best k-NN trial).",
            "",
            table_of(
                lambda row: f"{_points(row['knn_accuracy'])} ({_points(row['knn_gap'], signed=True)})",
                "knn_gap",
            ),
            "",
        ]
    lines += ["Sweeps:", ""]
    for name, report in zip(names, reports, strict=True):
        counts = report.status_counts()
        line = (
            f"- **{name}**: {report.config.method.name} on {id_dataset(report.config)}, along "
            f"{report.param}; {counts.get('ok', 0)} of {len(report.table) + report.not_started()} trials ok"
        )
        if report.unfinished():
            line += f", **{report.unfinished()} unfinished (partial)**"
        if report.directory is not None:
            line += f"; `{report.directory}`"
        lines.append(line)
    lines += ["", *_correlation_overview(reports, names)]
    return "\n".join(lines)


def write_comparison(reports: Sequence[SweepReport], directory: Path) -> list[Path]:
    """Write compare.md/.csv/.json and the plots of several sweeps into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    plots = [
        path
        for path in (
            _save_figure(_figure_accuracy_vs_rankme(reports), directory / "accuracy_vs_rankme.png"),
            _save_figure(_figure_along_param(reports), directory / "rankme_vs_param.png"),
            _save_figure(_figure_spectra(reports), directory / "spectra.png"),
        )
        if path is not None
    ]
    markdown = format_comparison(reports)
    if plots:
        markdown += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"
    rows = comparison_rows(reports)
    document = {
        "sweeps": [
            {
                "name": r.name,
                "directory": str(r.directory) if r.directory else None,
                "trials": len(r.table),
                "status": r.status_counts(),
                "unfinished": r.unfinished(),
                "correlations": correlations(r).to_dict(orient="records"),
            }
            for r in reports
        ],
        "selections": rows,
        "plots": [p.name for p in plots],
    }
    return [
        write_atomic(directory / "compare.md", markdown),
        write_atomic(directory / "compare.csv", pd.DataFrame(rows).to_csv(index=False)),
        write_atomic(directory / "compare.json", _json(document)),
        *plots,
    ]


# --------------------------------------------------------------------------- tables


def _label_free_columns(columns: Sequence[str]) -> list[str]:
    return [c for c in _RANK_COLUMNS if c in columns] + sorted(c for c in columns if c.startswith("label_free/"))


def _trial_columns(report: SweepReport) -> list[str]:
    table = report.table
    wanted = [
        "trial_id",
        *report.config.search.space,
        "seed",
        *_label_free_columns(list(table.columns)),
        *report.oracle_metrics,
        "status",
        "epochs_done",
        "wall_s",
    ]
    return [c for c in dict.fromkeys(wanted) if c in table.columns]


def _selection_frame(report: SweepReport) -> pd.DataFrame:
    rows = []
    # Per-dataset OOD accuracies stay in report.csv/.json; the table shows their mean.
    idn = id_dataset(report.config)
    hidden = {c for c in report.oracle_metrics if c != _OOD and not c.endswith(f"/{idn}")}
    for row in summary_rows(report.table, report.picks, report.config):
        shown: dict[str, Any] = {"rule": rule_label(row.pop("rule"))}
        for key, value in row.items():
            if key.removeprefix("gap ") in hidden:
                continue
            if key.startswith("gap oracle/"):
                shown[f"gap {key.removeprefix('gap oracle/')}"] = _points(value, signed=True)
            elif key.startswith("oracle/"):
                shown[f"{key.removeprefix('oracle/')} %"] = _points(value)
            else:
                shown[key] = value
        rows.append(shown)
    return pd.DataFrame.from_records(rows)


def _correlation_overview(reports: Sequence[SweepReport], names: Sequence[str]) -> list[str]:
    """Kendall τ of each label-free metric with each sweep's in-distribution accuracy."""
    cells: dict[str, dict[str, str]] = {}
    for name, report in zip(names, reports, strict=True):
        corr = correlations(report)
        corr = corr[corr["oracle"] == report.id_metric]
        for row in corr.itertuples(index=False):
            tau, rho = row.kendall_tau, row.spearman_rho
            text = "-" if not np.isfinite(tau) else f"τ {tau:+.2f}, ρ {rho:+.2f} (n={row.n})"
            cells.setdefault(row.metric, {})[name] = text
    if not cells:
        return []
    frame = pd.DataFrame([{"metric": metric, **{n: row.get(n, "-") for n in names}} for metric, row in cells.items()])
    return [
        "Rank correlation of each label-free metric with the in-distribution accuracy, over the "
        "eligible trials (Kendall τ, Spearman ρ; per-sweep reports list every oracle metric and "
        "the p-values).",
        "",
        _markdown(frame),
        "",
    ]


def _rule_order(rules: Sequence[str] | pd.Series) -> list[str]:
    """Oracle rules, then RankMe's, then the other label-free rules as they first appear."""
    seen = list(dict.fromkeys(rules))
    fixed = [rule for rule in _RULE_ORDER if rule.startswith(("oracle/", "rankme/"))]
    return [rule for rule in fixed if rule in seen] + [rule for rule in seen if rule not in fixed]


def _unique_names(reports: Sequence[SweepReport]) -> list[str]:
    names: list[str] = []
    for report in reports:
        name, index = report.name, 2
        while name in names:
            name, index = f"{report.name} ({index})", index + 1
        names.append(name)
    return names


def _coefficient(value: float, p_value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:+.2f} ({p_value:.2g})"


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _points(value: Any, *, signed: bool = False) -> str:
    """A fraction as percent (``0.931`` -> ``93.1``), ``-`` when missing."""
    if value is None or not np.isfinite(value):
        return "-"
    return f"{100 * float(value):+.1f}" if signed else f"{100 * float(value):.1f}"


def _markdown(frame: pd.DataFrame) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.4g}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c).strip() for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _json(document: Mapping[str, Any]) -> str:
    return json.dumps(_finite(document), indent=2, default=str)


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and ±inf become null, numpy scalars plain numbers."""
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- plots


def _save_figure(figure: Any, path: Path) -> Path | None:
    """Save a matplotlib figure as PNG atomically; None (nothing written) for no figure."""
    if figure is None:
        return None
    partial = path.with_name(f".{path.name}.partial")
    figure.savefig(partial, format="png")
    os.replace(partial, path)
    return path


def _new_figure(panels: int, *, width: float = 5.6, height: float = 3.8, rows: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    columns = -(-panels // rows)
    figure = Figure(figsize=(width * columns, height * rows), dpi=110, layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    return figure, axes.flat


def _axis(values: Sequence[Any]) -> tuple[Callable[[Any], float], dict[str, Any]]:
    """x positions of hyperparameter values: evenly spaced and labelled for a grid (≤ 12
    values or non-numeric), numeric (log scale when positive and spanning ≥ 20x) otherwise."""
    distinct = sorted(set(values), key=lambda v: (not isinstance(v, int | float), v))
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in distinct)
    if len(distinct) <= 12 or not numeric:
        index = {v: i for i, v in enumerate(distinct)}
        labels = [_value(v) for v in distinct]
        return (lambda v: float(index[v])), {"ticks": list(range(len(distinct))), "labels": labels}
    positive = min(distinct) > 0 and max(distinct) / min(distinct) >= 20
    return float, {"log": positive}


def _apply_axis(ax: Any, style: Mapping[str, Any], label: str) -> None:
    if "ticks" in style:
        ax.set_xticks(style["ticks"], style["labels"], rotation=30 if len(style["ticks"]) > 6 else 0)
    elif style.get("log"):
        ax.set_xscale("log")
    ax.set_xlabel(label)


def _slice_of_best(report: SweepReport, param: str) -> pd.DataFrame:
    """Seed-averaged configurations along ``param`` with the other searched keys held at the
    RankMe-max pick's values (all configurations when that slice has a single point)."""
    configs = aggregate_seeds(report.table, params=params_of(report.table, report.config))
    best = report.picks.get("rankme/max")
    others = [k for k in report.config.search.space if k != param]
    if best is not None and others and len(configs):
        mask = np.ones(len(configs), dtype=bool)
        for key in others:
            mask &= (configs[key] == best.params.get(key)).to_numpy()
        if mask.sum() > 1:
            configs = configs[mask]
    return configs[configs[param].notna()] if len(configs) else configs


def _panel_metrics(report: SweepReport) -> list[str]:
    """The label-free metric of each non-oracle rule, RankMe first, without repeats."""
    metrics = [report.rank_metric] if report.rank_metric else []
    metrics += [p.metric for r, p in report.picks.items() if not r.startswith(("oracle/", "rankme/"))]
    return list(dict.fromkeys(metrics))


def _figure_along_param(reports: Sequence[SweepReport]) -> Any:
    """Each sweep's label-free metrics along its swept hyperparameter (one row per sweep)."""
    usable = [r for r in reports if r.param and r.rank_metric and len(r.eligible()) and r.param in r.table.columns]
    if not usable:
        return None
    width = max(len(_panel_metrics(r)) for r in usable)
    figure, axes = _new_figure(width * len(usable), rows=len(usable))
    axes = list(axes)
    for row, report in enumerate(usable):
        panels = axes[row * width : (row + 1) * width]
        for ax in panels[len(_panel_metrics(report)) :]:
            ax.set_visible(False)
        _draw_along_param(report, panels)
    return figure


def _draw_along_param(report: SweepReport, axes: Sequence[Any]) -> None:
    """One panel per label-free metric with a rule: its seed-averaged value along the swept
    hyperparameter, the RankMe plateau band, each rule's pick; oracle accuracy on the first."""
    param = report.param
    assert param is not None
    configs = _slice_of_best(report, param)
    if not len(configs):
        return
    waiting = report.table[report.table["status"].isin(UNFINISHED) & report.table[param].notna()]
    position, style = _axis([*configs[param].tolist(), *waiting[param].tolist()])
    configs = configs.assign(_x=[position(v) for v in configs[param]]).sort_values("_x")
    trials = report.eligible()
    trials = trials[trials[param].isin(configs[param].tolist())]
    oracle_at: dict[float, list[str]] = {}
    for rule, pick in report.picks.items():
        if rule.startswith("oracle/") and pick.params.get(param) in set(configs[param]):
            oracle_at.setdefault(position(pick.params[param]), []).append(rule.removeprefix("oracle/"))
    for panel, (ax, metric) in enumerate(zip(axes, _panel_metrics(report), strict=False)):
        ax.plot(configs["_x"], configs[metric], "o-", color="tab:blue", label=metric, zorder=3)
        if len(trials) > len(configs):  # seeds: every trial as a faint dot
            ax.plot([position(v) for v in trials[param]], trials[metric], ".", color="tab:blue", alpha=0.35)
        if metric in waiting.columns and waiting[metric].notna().any():
            ax.plot(
                [position(v) for v in waiting[param]],
                waiting[metric],
                "o",
                markerfacecolor="none",
                color="0.5",
                label="unfinished trial (latest value)",
            )
        finite = configs[metric][np.isfinite(configs[metric])]
        if metric == report.rank_metric and len(finite):
            top, tolerance = float(finite.max()), report.config.selection.tolerance
            ax.axhspan(
                plateau_threshold(top, tolerance),
                top,
                color="tab:green",
                alpha=0.18,
                label=f"plateau band (within {100 * tolerance:g} % of max)",
            )
        if metric == _ALPHA:
            ax.axhline(1.0, color="tab:green", linestyle=":", label="α-ReQ target α = 1")
        for x, probes in oracle_at.items():
            ax.axvline(x, color="tab:red", linestyle=":", linewidth=1.3, label=f"oracle pick ({', '.join(probes)})")
        for rule, pick in report.picks.items():
            value = pick.params.get(param)
            if rule.startswith("oracle/") or pick.metric != metric or value not in set(configs[param]):
                continue
            marker, colour = _PLOT_STYLE.get(rule, ("s", "tab:orange"))
            ax.plot(
                [position(value)],
                [configs.loc[configs[param] == value, metric].iloc[0]],
                marker,
                color=colour,
                markersize=14 if marker == "*" else 10,
                markeredgecolor="black",
                linestyle="none",
                label=f"{rule} pick",
                zorder=4,
            )
        ax.set_ylabel(metric)
        _apply_axis(ax, style, param)
        ax.set_title(f"{report.name}: {metric} along {param.rsplit('.', 1)[-1]}", fontsize=9)
        handles, labels = ax.get_legend_handles_labels()
        if panel == 0:
            twin = ax.twinx()
            for accuracy, fmt in ((report.id_metric, "s--"), (_OOD, "x--")):
                if accuracy and accuracy in configs.columns:
                    twin.plot(
                        configs["_x"],
                        100 * configs[accuracy],
                        fmt,
                        color="tab:orange",
                        label=f"{accuracy} (%)",
                    )
            twin.set_ylabel("oracle accuracy (%)", color="tab:orange")
            more_handles, more_labels = twin.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        _legend_below(ax, handles, labels)


def _legend_below(
    ax: Any, handles: Sequence[Any] | None = None, labels: Sequence[str] | None = None, *, ncol: int = 2
) -> None:
    """The axes' legend under it (outside the data, inside the constrained layout)."""
    if handles is None or labels is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=ncol, frameon=False)


def _figure_accuracy_vs_rankme(reports: Sequence[SweepReport]) -> Any:
    """Oracle accuracy against RankMe, one colour per sweep: in-distribution, then OOD mean."""
    usable = [r for r in reports if r.rank_metric and r.id_metric and len(r.eligible())]
    if not usable:
        return None
    targets = [("id", "in-distribution linear-probe accuracy (%)")]
    if any(_OOD in r.table.columns for r in usable):
        targets.append(("ood", "OOD mean linear-probe accuracy (%)"))
    figure, axes = _new_figure(len(targets))
    for ax, (kind, ylabel) in zip(axes, targets, strict=False):
        for index, report in enumerate(usable):
            colour = f"C{index}"
            accuracy = report.id_metric if kind == "id" else _OOD
            rank = report.rank_metric
            if accuracy not in report.table.columns:
                continue
            trials = report.eligible()
            corr = correlations(report)
            tau = corr.loc[(corr["metric"] == "rankme/embedding") & (corr["oracle"] == accuracy), "kendall_tau"]
            label = report.name + (f" (τ={tau.iloc[0]:+.2f})" if len(tau) and np.isfinite(tau.iloc[0]) else "")
            ax.scatter(trials[rank], 100 * trials[accuracy], color=colour, alpha=0.75, label=label)
            for rule in ("rankme/plateau", "oracle/linear" if kind == "id" else "oracle/ood"):
                pick = report.picks.get(rule)
                if pick is None:
                    continue
                chosen = trials[trials["trial_id"].isin(pick.trial_ids)]
                marker = _PLOT_STYLE[rule][0]
                ax.scatter(
                    chosen[rank],
                    100 * chosen[accuracy],
                    marker=marker,
                    s=170,
                    facecolor="none",
                    edgecolor=colour,
                    linewidth=1.8,
                )
        ax.scatter([], [], marker="*", s=120, facecolor="none", edgecolor="black", label="RankMe plateau pick")
        ax.scatter(
            [],
            [],
            marker="^" if kind == "id" else "<",
            s=120,
            facecolor="none",
            edgecolor="black",
            label="oracle pick",
        )
        ax.set_xlabel("RankMe of the embedding (rule's column)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        _legend_below(ax)
    figure.suptitle("Oracle accuracy against RankMe (one point per trial with status ok)", fontsize=10)
    return figure


def _figure_spectra(reports: Sequence[SweepReport]) -> Any:
    """Log-log singular-value spectra (σ_k / σ_1) of each sweep's trials, picks highlighted."""
    usable = [r for r in reports if len(r.table) and any(len(r.spectra.get(t, ())) for t in r.eligible()["trial_id"])]
    if not usable:
        return None
    figure, axes = _new_figure(len(usable))
    for ax, report in zip(axes, usable, strict=False):
        picked = rules_by_trial(report.picks)
        eligible = set(report.eligible()["trial_id"]) if len(report.table) else set()
        param = report.param
        values = report.table.set_index("trial_id")[param] if param in report.table.columns else {}
        colour = 0
        for trial_id in sorted(report.spectra, key=lambda t: (t in picked, t)):
            sigma = np.asarray(report.spectra[trial_id], dtype=float)
            sigma = sigma[np.isfinite(sigma) & (sigma > 0)]
            if not sigma.size or trial_id not in eligible:
                continue
            k = np.arange(1, sigma.size + 1)
            if trial_id in picked:
                value = values.get(trial_id) if len(values) else None
                what = trial_id if value is None else f"{param.rsplit('.', 1)[-1]}={_value(value)}"
                label = f"{what}: " + ", ".join(picked[trial_id])
                ax.loglog(k, sigma / sigma[0], color=f"C{colour}", linewidth=2, label=label)
                colour += 1
            else:
                ax.loglog(k, sigma / sigma[0], color="0.6", linewidth=0.8, alpha=0.7)
        ax.plot([], [], color="0.6", linewidth=0.8, label="other trials")
        ax.set_xlabel("k")
        ax.set_ylabel("σ_k / σ_1")
        ax.set_title(f"{report.name}: embedding spectra", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        _legend_below(ax, ncol=1)
    return figure
