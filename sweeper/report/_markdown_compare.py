"""Several sweeps side by side as markdown (:func:`format_comparison`): the RankMe paper's
Table 1 (rules x sweeps) with the seeds' intervals, the rules ranked by mean gap, and Kendall τ
per label-free metric and sweep."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from sweeper.names import OK, OOD_MEAN
from sweeper.report._compare import RuleGaps, gap_metric, rule_gaps, unique_names
from sweeper.report._markdown import (
    coefficient,
    gap_cell,
    interval,
    markdown_table,
    noise_verdict,
    points,
)
from sweeper.report._model import PickGap, SweepReport, id_dataset, rule_label
from sweeper.report._seeds import BOOTSTRAP_REPLICATES, NO_UNCERTAINTY

_VERSUS = "vs RankMe plateau (W/T/L)"


def format_comparison(reports: Sequence[SweepReport]) -> str:
    """Markdown of the Table-1-style comparison of several sweeps (rules x sweeps).

    Cells: the accuracy of each rule's pick and, in brackets, its gap to the oracle with the
    gap's 95 % paired-bootstrap interval over seeds (sweeps with several seeds). Per rule:
    the mean gap over the sweeps with its interval, the worst gap, and wins/ties/losses of
    each label-free rule against RankMe's plateau rule; rules ranked by mean gap.
    """
    names = unique_names(reports)
    lines = ["## Oracle vs label-free selection", ""]
    if not any(report.picks for report in reports):
        return "\n".join([*lines, "No sweep has a trial finished with status ok.", ""])
    ood = {name: _ood_gaps(report) for name, report in zip(names, reports, strict=True)}
    has_ood = any(math.isfinite(gap.accuracy) for gaps in ood.values() for gap in gaps.values())
    id_rules = rule_gaps(reports, kind="id")
    lines += [
        "Accuracy (%) of the configuration each rule picks, in-distribution linear probe"
        + ("; OOD = mean linear probe over the OOD datasets" if has_ood else "")
        + ". In brackets: the gap to the labelled oracle of that column, in points (0 = the oracle's "
        "accuracy), with its 95 % paired-bootstrap interval over seeds in square brackets where the "
        f"sweep has several seeds (B = {BOOTSTRAP_REPLICATES}, picks held fixed). Rules ranked by mean "
        "gap (best first). Mean gap: over the sweeps, in-distribution; its interval averages the "
        "sweeps' bootstrap replicates replicate by replicate. Worst gap: the lowest, and its sweep. "
        "W/T/L: sweeps where the label-free rule's gap is above, equal to (same configuration) or "
        "below RankMe plateau's.",
        "",
        *_single_seed_note(reports, names),
        _rules_by_sweeps(id_rules, names, ood if has_ood else {}),
        "",
        *_noise_words(id_rules, names),
    ]
    if any(gap_metric(report, "knn") for report in reports):
        lines += [
            "k-NN accuracy (%) of each pick, in-distribution (gap to the best k-NN configuration).",
            "",
            _rules_by_sweeps(rule_gaps(reports, kind="knn"), names, {}),
            "",
        ]
    lines += ["Sweeps:", "", *_sweep_lines(reports, names), "", *_correlation_overview(reports, names)]
    return "\n".join(lines)


def _ood_gaps(report: SweepReport) -> dict[str, PickGap]:
    return report.pick_gaps(OOD_MEAN) if gap_metric(report, "ood") else {}


def _single_seed_note(reports: Sequence[SweepReport], names: Sequence[str]) -> list[str]:
    """Once per section: which sweeps have a single seed, hence no interval."""
    single = [name for name, report in zip(names, reports, strict=True) if report.picks and report.n_seeds <= 1]
    if not single:
        return []
    return [f"{NO_UNCERTAINTY[0].upper()}{NO_UNCERTAINTY[1:]}: {', '.join(single)}.", ""]


def _rules_by_sweeps(ranked: Sequence[RuleGaps], names: Sequence[str], ood: dict[str, dict[str, PickGap]]) -> str:
    """One row per rule (ranked), one column per sweep, then mean and worst gap and W/T/L."""
    body = []
    for rule in ranked:
        row = {"selection rule": rule_label(rule.rule)}
        for name in names:
            gap = rule.gaps.get(name)
            row[name] = "-" if gap is None else _cell(gap, ood.get(name, {}).get(rule.rule))
        row["mean gap"] = " ".join(p for p in (points(rule.mean, signed=True), interval(rule.low, rule.high)) if p)
        row["worst gap"] = (
            "-" if rule.worst_sweep is None else f"{points(rule.worst, signed=True)} ({rule.worst_sweep})"
        )
        row[_VERSUS] = "-" if rule.wins is None else f"{rule.wins}/{rule.ties}/{rule.losses}"
        body.append(row)
    return markdown_table(pd.DataFrame(body))


def _cell(gap: PickGap, ood: PickGap | None) -> str:
    text = f"{points(gap.accuracy)} ({gap_cell(gap)})"
    if ood is not None and math.isfinite(ood.accuracy):
        text += f"; OOD {points(ood.accuracy)} ({gap_cell(ood)})"
    return text


def _noise_words(ranked: Sequence[RuleGaps], names: Sequence[str]) -> list[str]:
    """Per label-free rule, the sweeps where its gap is within the seeds' noise and beyond."""
    lines = []
    for rule in ranked:
        if rule.rule.startswith("oracle/"):
            continue
        verdicts: dict[str, list[str]] = {}
        for name in names:
            gap = rule.gaps.get(name)
            verdict = None if gap is None or gap.replicates is None else noise_verdict(gap)
            if verdict is not None:
                verdicts.setdefault(verdict, []).append(name)
        if verdicts:
            said = "; ".join(f"{verdict} in {', '.join(sweeps)}" for verdict, sweeps in verdicts.items())
            lines.append(f"- {rule_label(rule.rule)}: {said}")
    if not lines:
        return []
    head = "In words (in-distribution gap; within seed noise: its 95 % interval contains 0):"
    return [head, "", *lines, ""]


def _sweep_lines(reports: Sequence[SweepReport], names: Sequence[str]) -> list[str]:
    """One bullet per sweep: what it searched, its seeds, how many trials are ok, where it lives."""
    lines = []
    for name, report in zip(names, reports, strict=True):
        counts = report.status_counts()
        seeds = f"{report.n_seeds} seeds" if report.n_seeds > 1 else "one seed"
        line = (
            f"- **{name}**: {report.config.method.name} on {id_dataset(report.config)}, along "
            f"{report.param}, {seeds}; {counts.get(OK, 0)} of {len(report.table) + report.not_started()} trials ok"
        )
        if report.unfinished():
            line += f", **{report.unfinished()} unfinished (partial)**"
        if report.directory is not None:
            line += f"; `{report.directory}`"
        lines.append(line)
    return lines


def _correlation_overview(reports: Sequence[SweepReport], names: Sequence[str]) -> list[str]:
    """Kendall τ of each label-free metric (rows) with each sweep's (columns) in-distribution
    accuracy, with its bootstrap interval where the sweep has several seeds."""
    cells: dict[str, dict[str, str]] = {}
    for name, report in zip(names, reports, strict=True):
        corr = report.correlations
        for row in corr[corr["oracle"] == report.id_metric].itertuples(index=False):
            text = coefficient(row.kendall_tau, row.tau_low, row.tau_high)
            if text != "-":
                text += f" ({row.n} {'configs' if row.over == 'configurations' else 'trials'})"
            cells.setdefault(row.metric, {})[name] = text
    if not cells:
        return []
    frame = pd.DataFrame(
        [{"Kendall τ": metric, **{n: row.get(n, "-") for n in names}} for metric, row in cells.items()]
    )
    return [
        "Rank correlation (Kendall τ) of each label-free metric with the in-distribution accuracy: over configurations "
        "(seed means) with its 95 % paired-bootstrap interval over seeds where the sweep has several "
        "seeds, over trials otherwise (per-sweep reports list every oracle metric, Spearman ρ and the "
        "p-values).",
        "",
        *_single_seed_note(reports, names),
        markdown_table(frame),
        "",
    ]
