"""One sweep's report as markdown (:func:`format_summary`), and the cells every markdown table
of the reports shares: accuracies in percent, gaps in points with their seed intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sweeper.names import CONFIRM_PHASE, OOD_MEAN, PHASE
from sweeper.report._model import (
    RANK_COLUMNS,
    PickGap,
    SweepReport,
    id_dataset,
    rule_label,
)
from sweeper.report._seeds import BOOTSTRAP_REPLICATES, N_SEEDS, NO_UNCERTAINTY

ORACLE_CONFIGURATION = "the oracle's configuration"
WITHIN_NOISE = "within seed noise"
BEYOND_NOISE = "below the oracle beyond seed noise"
ABOVE_NOISE = "above the oracle beyond seed noise"


def format_summary(report: SweepReport) -> str:
    """Markdown of one sweep: trials (and, with several seeds, configurations as mean ± std
    over seeds), the headline pick, each rule's pick with accuracies and gaps (with their
    95 % paired-bootstrap intervals over seeds), and the rank-accuracy correlations.

    Printed at the end of ``sweeper run``, by ``sweeper status`` and ``sweeper compare``.
    """
    lines = [_title(report), ""]
    note = report.progress_note()
    if note:
        lines += [f"**{note}**", ""]
    if report.picks:
        lines += [_headline_sentence(report), ""]
    if report.oracle_skipped:
        lines += [
            f"**No oracle: {report.oracle_skipped}.** The picks are label-free only; their accuracy and gap to "
            "the oracle are unknown.",
            "",
        ]
    lines += _confirmation_sentences(report)
    if len(report.table):
        lines += ["### Trials", "", markdown_table(report.table[_trial_columns(report)]), ""]
        lines += _configuration_table(report)
    if not report.picks:
        lines += ["No trial finished with status ok: nothing to select.", ""]
        return "\n".join(lines)
    lines += [
        "### Selections",
        "",
        _selections_intro(report),
        "",
        markdown_table(_selection_frame(report)),
        "",
        *_rule_notes(report),
        *_noise_sentences(report),
        *_correlation_tables(report),
    ]
    return "\n".join(lines)


def _selections_intro(report: SweepReport) -> str:
    if not report.oracle_metrics:
        return "Each rule's pick and the value it decided on (no oracle accuracy: no labelled probe ran)."
    seeds = report.n_seeds > 1
    return (
        "Oracle accuracy of each rule's pick (%, mean over its seeds"
        + (", ± std over seeds" if seeds else "")
        + ") and its gap to the oracle's configuration (points; 0 = as good as the labelled oracle"
        + (", in square brackets its 95 % paired-bootstrap interval over seeds" if seeds else "")
        + ")."
    )


def _title(report: SweepReport) -> str:
    what = f"{report.config.method.name} on {id_dataset(report.config)}"
    if report.param:
        what += f", along {report.param}"
    states = [f"{n} {status}" for status, n in report.status_counts().items()]
    if report.not_started():
        states.append(f"{report.not_started()} not started")
    total = len(report.table) + report.not_started()
    return f"## Sweep {report.name}: {what} ({total} trials: {', '.join(states) or 'none yet'})"


def _headline_sentence(report: SweepReport) -> str:
    """The pick of the rule ``selection.rule`` names, the one the sweep recommends."""
    rule, pick = report.headline
    prefix = f"Headline pick (selection.rule={report.config.selection.rule})"
    if pick is None:
        return f"{prefix}: none, no trial finished with status ok has a RankMe value."
    trials = ("trial " if len(pick.trial_ids) == 1 else "trials ") + ", ".join(pick.trial_ids)
    params = ", ".join(f"{key}={format_value(value)}" for key, value in pick.params.items())
    return f"{prefix}: {trials} ({params}; {rule_label(rule)}, {pick.metric} = {pick.value:.4g})."


def _confirmation_sentences(report: SweepReport) -> list[str]:
    """What the confirmation trials cost and whether they changed the headline pick."""
    before = report.before_confirmation
    if before is None:
        return []
    confirm = report.table[report.table[PHASE] == CONFIRM_PHASE]
    configurations = len(confirm.groupby(list(report.config.search.space), dropna=False))
    search_epochs, extra = int(before.table["epochs_done"].sum()), int(confirm["epochs_done"].sum())
    share = f" (+{100 * extra / search_epochs:.0f} %)" if search_epochs else ""
    (_, old), (_, new) = before.headline, report.headline
    if old is None or new is None:
        verdict = "no headline pick to compare"
    else:
        verdict = "unchanged" if old.params == new.params else f"changed from {_values(old.params)}"
    return [
        "### Confirmation",
        "",
        f"{len(confirm)} confirmation trials (the top {configurations} configurations of the headline rule "
        f"trained again with new seeds): {extra} trial-epochs on top of the search's {search_epochs}{share}. "
        f"The headline pick on seed means: {_values(new.params) if new is not None else 'none'}, {verdict}.",
        "",
    ]


def _values(params: dict[str, object]) -> str:
    return ", ".join(f"{key}={format_value(value)}" for key, value in params.items())


def _label_free_columns(columns: Sequence[str]) -> list[str]:
    return [c for c in RANK_COLUMNS if c in columns] + sorted(c for c in columns if c.startswith("label_free/"))


def _trial_columns(report: SweepReport) -> list[str]:
    table = report.table
    wanted = [
        "trial_id",
        *report.config.search.space,
        "seed",
        *([PHASE] if report.before_confirmation is not None else []),
        *_label_free_columns(list(table.columns)),
        *report.oracle_metrics,
        "status",
        "epochs_done",
        "wall_s",
    ]
    return [c for c in dict.fromkeys(wanted) if c in table.columns]


def _configuration_table(report: SweepReport) -> list[str]:
    """With several seeds: one row per configuration, every column as mean ± std."""
    if report.n_seeds <= 1:
        return []
    stats = report.configurations
    metrics = _label_free_columns(list(report.seeds.columns))
    rows = []
    for _, config in stats.iterrows():
        row: dict[str, Any] = {key: config[key] for key in report.seeds.keys}
        row["seeds"] = int(config[N_SEEDS])
        for metric in metrics:
            row[metric] = mean_std(config[metric], config[f"{metric} std"])
        for oracle in report.oracle_metrics:
            row[f"{oracle.removeprefix('oracle/')} %"] = mean_std(config[oracle], config[f"{oracle} std"], percent=True)
        row["trials"] = ",".join(config["trial_ids"])
        rows.append(row)
    return [
        f"#### Configurations (mean ± std over {report.n_seeds} seeds)",
        "",
        "Accuracies in %; std: sample standard deviation over the configuration's seeds (ddof = 1).",
        "",
        markdown_table(pd.DataFrame.from_records(rows)),
        "",
    ]


def _selection_frame(report: SweepReport) -> pd.DataFrame:
    """One row per rule: its pick, then for each shown oracle column accuracy and gap."""
    dataset = id_dataset(report.config)
    # Per-dataset OOD accuracies stay in report.csv/.json; the table shows their mean.
    shown = [c for c in report.oracle_metrics if c == OOD_MEAN or c.endswith(f"/{dataset}")]
    scores = {metric: report.pick_gaps(metric) for metric in shown}
    rows = []
    for rule, pick in report.picks.items():
        row: dict[str, Any] = {
            "rule": rule_label(rule),
            "trials": ",".join(pick.trial_ids),
            **{key: pick.params.get(key) for key in report.config.search.space},
            "metric": pick.metric,
            "value": pick.value,
        }
        for metric in shown:
            gap = scores[metric][rule]
            name = metric.removeprefix("oracle/")
            row[f"{name} %"] = mean_std(gap.accuracy, gap.std, percent=True)
            row[f"gap {name}"] = gap_cell(gap)
        rows.append(row)
    return pd.DataFrame.from_records(rows)


def _rule_notes(report: SweepReport) -> list[str]:
    """What the combined rules decided on the way (the gate, the tolerance, the metrics voted)."""
    notes = [
        {"rule": rule_label(rule), "how it decided": pick.note} for rule, pick in report.picks.items() if pick.note
    ]
    return [markdown_table(pd.DataFrame.from_records(notes)), ""] if notes else []


def _noise_sentences(report: SweepReport) -> list[str]:
    """Each rule's in-distribution gap in words: within the seeds' noise or beyond it."""
    metric = report.id_metric
    if metric is None:
        return []
    if report.n_seeds <= 1:
        return [f"Gap intervals: {NO_UNCERTAINTY}; a single seed per configuration says nothing of seed noise.", ""]
    lines = [
        f"Gap to the oracle on {metric}, in points (mean over seeds; 95 % paired-bootstrap interval over "
        f"{report.n_seeds} seeds, B = {BOOTSTRAP_REPLICATES}, the picks held fixed):",
        "",
    ]
    for rule, gap in report.pick_gaps(metric).items():
        pick = report.picks[rule]
        if rule.startswith("oracle/") and pick.metric == metric:
            continue  # the reference itself
        lines.append(f"- {rule_label(rule)}: {noise_sentence(gap)}")
    return [*lines, ""]


def noise_verdict(gap: PickGap) -> str | None:
    """Where a pick's gap lies against the seeds' noise, in words; None when unknown."""
    if gap.is_oracle:
        return ORACLE_CONFIGURATION
    if gap.within_noise is None:
        return None
    if gap.within_noise:
        return WITHIN_NOISE
    return BEYOND_NOISE if gap.high < 0 else ABOVE_NOISE


def noise_sentence(gap: PickGap) -> str:
    """``-0.4 points [-1.1, +0.3], within seed noise (the 95 % interval contains 0)``."""
    verdict = noise_verdict(gap)
    if verdict == ORACLE_CONFIGURATION:
        return f"{verdict} (gap 0)"
    if not math.isfinite(gap.gap):
        return "gap unknown (no oracle value)"
    text = f"{points(gap.gap, signed=True)} points"
    if verdict is None:
        return f"{text}, interval unknown"
    text += f" {interval(gap.low, gap.high)}, {verdict}"
    return text + (" (the 95 % interval contains 0)" if verdict == WITHIN_NOISE else "")


def _correlation_tables(report: SweepReport) -> list[str]:
    """A Kendall τ and a Spearman ρ table (metric x oracle accuracy), nothing without pairs."""
    corr = report.correlations
    if not len(corr):
        return []
    if report.n_seeds > 1:
        heading = f"{len(report.configurations)} configurations, means over {report.n_seeds} seeds"
        text = (
            "Kendall τ (95 % paired-bootstrap interval over seeds in square brackets, p-value in brackets) "
            "and Spearman ρ (p-value) of each label-free metric with each oracle accuracy, one point per "
            "configuration (its mean over seeds)."
        )
    else:
        heading = f"{len(report.eligible())} eligible trials"
        text = (
            "Kendall τ and Spearman ρ (p-value in brackets) of each label-free metric with each "
            f"oracle accuracy, one point per trial with status ok. Kendall τ: {NO_UNCERTAINTY}."
        )
    lines = [f"### Rank-accuracy correlations ({heading})", "", text, ""]
    rows = list(corr.itertuples(index=False))
    for title, cells in (
        ("Kendall τ", [_with_p(coefficient(r.kendall_tau, r.tau_low, r.tau_high), r.kendall_p) for r in rows]),
        ("Spearman ρ", [_with_p(coefficient(r.spearman_rho), r.spearman_p) for r in rows]),
    ):
        pivot = corr.assign(cell=cells).pivot(index="metric", columns="oracle", values="cell")
        pivot = pivot.loc[list(dict.fromkeys(corr["metric"])), list(dict.fromkeys(corr["oracle"]))]
        lines += [markdown_table(pivot.reset_index().rename(columns={"metric": title})), ""]
    return lines


# --------------------------------------------------------------------------- cells and tables


def markdown_table(frame: pd.DataFrame) -> str:
    """A markdown table of ``frame``: floats to 4 significant digits, ``|`` escaped."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.4g}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c).strip() for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def format_value(value: Any) -> str:
    """A hyperparameter value as the reports print it (``0.1``, ``1e-05``, ``adamw``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def points(value: Any, *, signed: bool = False) -> str:
    """A fraction as percent (``0.931`` -> ``93.1``), ``-`` when missing."""
    if value is None or not np.isfinite(value):
        return "-"
    return f"{100 * float(value):+.1f}" if signed else f"{100 * float(value):.1f}"


def interval(low: float, high: float) -> str:
    """A gap interval in points, ``[-1.1, +0.3]``; empty when unknown."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return ""
    return f"[{points(low, signed=True)}, {points(high, signed=True)}]"


def gap_cell(gap: PickGap) -> str:
    """The gap in points, with its interval when the sweep has one: ``-0.4 [-1.1, +0.3]``."""
    return " ".join(part for part in (points(gap.gap, signed=True), interval(gap.low, gap.high)) if part)


def mean_std(mean: float, std: float, *, percent: bool = False) -> str:
    """``90.0 ± 1.2`` (percent) or ``15.8 ± 0.21``; the mean alone when the std is unknown."""
    if not np.isfinite(mean):
        return "-"
    if np.isfinite(std) and std <= 1e-12 * max(1.0, abs(mean)):
        std = 0.0  # a constant column's rounding residue, not a spread
    if percent:
        return points(mean) + (f" ± {100 * std:.1f}" if np.isfinite(std) else "")
    return f"{mean:.4g}" + (f" ± {std:.2g}" if np.isfinite(std) else "")


def coefficient(value: float, low: float = math.nan, high: float = math.nan) -> str:
    """A correlation with its interval when known: ``+0.60 [+0.20, +0.90]``."""
    if not np.isfinite(value):
        return "-"
    text = f"{value:+.2f}"
    return text + (f" [{low:+.2f}, {high:+.2f}]" if np.isfinite(low) and np.isfinite(high) else "")


def _with_p(text: str, p_value: float) -> str:
    return text if text == "-" else f"{text} ({p_value:.2g})"
