"""The report's figures, each returned as PNG bytes (or None when there is nothing to draw);
writing them is :mod:`sweeper.report._files`' job.

matplotlib's object API with the Agg canvas: no pyplot, so no global figure state and no GUI
backend, and figures are freed as soon as their bytes are out.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sweeper.names import OOD_MEAN, RANKME_EMBEDDING, UNFINISHED_STATUSES
from sweeper.report._compare import rule_gaps, unique_names
from sweeper.report._markdown import format_value
from sweeper.report._model import ALPHA_REQ, SweepReport, params_of, rule_label, rules_by_trial
from sweeper.selection import aggregate_seeds, plateau_threshold

_PLOT_STYLE = {  # rule -> (marker, colour)
    "oracle/linear": ("^", "tab:red"),
    "oracle/knn": ("v", "tab:pink"),
    "oracle/ood": ("<", "tab:brown"),
    "rankme/max": ("D", "tab:purple"),
    "rankme/plateau": ("*", "tab:green"),
    "rankme/noise_plateau": ("P", "tab:olive"),
}


def along_param_png(reports: Sequence[SweepReport]) -> bytes | None:
    """``rankme_vs_param.png``: each sweep's label-free metrics along its swept
    hyperparameter (one row of panels per sweep), with the plateau band, each rule's pick
    and the oracle accuracy."""
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
    return _png(figure)


def accuracy_vs_rankme_png(reports: Sequence[SweepReport]) -> bytes | None:
    """``accuracy_vs_rankme.png``: oracle accuracy against RankMe, one colour per sweep and
    one point per eligible trial; in-distribution, then the OOD mean."""
    usable = [r for r in reports if r.rank_metric and r.id_metric and len(r.eligible())]
    if not usable:
        return None
    targets = [("id", "in-distribution linear-probe accuracy (%)")]
    if any(OOD_MEAN in r.table.columns for r in usable):
        targets.append(("ood", "OOD mean linear-probe accuracy (%)"))
    figure, axes = _new_figure(len(targets))
    for ax, (kind, ylabel) in zip(axes, targets, strict=False):
        for index, report in enumerate(usable):
            _scatter_accuracy(ax, report, kind, colour=f"C{index}")
        ax.scatter([], [], marker="*", s=120, facecolor="none", edgecolor="black", label="RankMe plateau pick")
        oracle_marker = "^" if kind == "id" else "<"
        ax.scatter([], [], marker=oracle_marker, s=120, facecolor="none", edgecolor="black", label="oracle pick")
        ax.set_xlabel("RankMe of the embedding (rule's column)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        _legend_below(ax)
    figure.suptitle("Oracle accuracy against RankMe (one point per trial with status ok)", fontsize=10)
    return _png(figure)


def spectra_png(reports: Sequence[SweepReport]) -> bytes | None:
    """``spectra.png``: log-log singular-value spectra (σ_k / σ_1) of each sweep's eligible
    trials, the picked ones highlighted and labelled with the rules that chose them."""
    usable = [r for r in reports if len(r.table) and any(len(r.spectra.get(t, ())) for t in r.eligible()["trial_id"])]
    if not usable:
        return None
    figure, axes = _new_figure(len(usable))
    for ax, report in zip(axes, usable, strict=False):
        _draw_spectra(ax, report)
        ax.plot([], [], color="0.6", linewidth=0.8, label="other trials")
        ax.set_xlabel("k")
        ax.set_ylabel("σ_k / σ_1")
        ax.set_title(f"{report.name}: embedding spectra", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        _legend_below(ax, ncol=1)
    return _png(figure)


def comparison_gaps_png(reports: Sequence[SweepReport]) -> bytes | None:
    """``compare_gaps.png``: per rule (rows, best mean gap on top) the in-distribution gap of
    its pick in each sweep, with the 95 % paired-bootstrap interval over seeds as error bars,
    and the mean gap over the sweeps with its interval (black diamond)."""
    ranked = [r for r in rule_gaps(reports, kind="id") if r.n_sweeps]
    if not ranked:
        return None
    names = unique_names(reports)
    seeded = {name: report.n_seeds > 1 for name, report in zip(names, reports, strict=True)}
    figure, axes = _new_figure(1, width=7.5, height=1.6 + 0.5 * len(ranked))
    ax = axes[0]
    # Within a rule's row: the mean on top, then one line per sweep.
    spread = np.linspace(-0.08, 0.32, len(names)) if len(names) > 1 else np.full(1, 0.12)
    for column, name in enumerate(names):
        xs, ys, bars = [], [], []
        for row, rule in enumerate(ranked):
            gap = rule.gaps.get(name)
            if gap is None or not np.isfinite(gap.gap):
                continue
            xs.append(100 * gap.gap)
            ys.append(row + spread[column])
            known = np.isfinite(gap.low) and np.isfinite(gap.high)
            bars.append((100 * (gap.gap - gap.low), 100 * (gap.high - gap.gap)) if known else (0.0, 0.0))
        label = name if seeded[name] else f"{name} (one seed: no interval)"
        error = np.array(bars).T if bars else None
        face = f"C{column}" if seeded[name] else "white"  # open dots: no interval known
        ax.errorbar(xs, ys, xerr=error, fmt="o", color=f"C{column}", mfc=face, capsize=3, markersize=5, label=label)
    for row, rule in enumerate(ranked):
        if row % 2:
            ax.axhspan(row - 0.5, row + 0.5, color="0.94", zorder=0)
        if np.isfinite(rule.mean):
            known = np.isfinite(rule.low) and np.isfinite(rule.high)
            error = [[100 * (rule.mean - rule.low)], [100 * (rule.high - rule.mean)]] if known else None
            ax.errorbar([100 * rule.mean], [row - 0.28], xerr=error, fmt="D", color="black", markersize=6, capsize=4)
    ax.errorbar([], [], fmt="D", color="black", label="mean over sweeps")
    ax.axvline(0.0, color="tab:red", linestyle=":", linewidth=1.2, label="oracle (gap 0)")
    ax.set_yticks(range(len(ranked)), [rule_label(r.rule) for r in ranked])
    ax.set_ylim(len(ranked) - 0.5, -0.5)
    ax.set_xlabel("gap to the oracle, in-distribution linear probe (points)")
    ax.grid(alpha=0.3, axis="x")
    ax.set_title("Gap of each rule's pick; bars: 95 % paired bootstrap over seeds", fontsize=9)
    _legend_below(ax)
    return _png(figure)


# --------------------------------------------------------------------------- figures and axes


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _new_figure(panels: int, *, width: float = 5.6, height: float = 3.8, rows: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # matplotlib is slow to import; only plots need it

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
        labels = [format_value(v) for v in distinct]
        return (lambda v: float(index[v])), {"ticks": list(range(len(distinct))), "labels": labels}
    positive = min(distinct) > 0 and max(distinct) / min(distinct) >= 20
    return float, {"log": positive}


def _apply_axis(ax: Any, style: dict[str, Any], label: str) -> None:
    if "ticks" in style:
        ax.set_xticks(style["ticks"], style["labels"], rotation=30 if len(style["ticks"]) > 6 else 0)
    elif style.get("log"):
        ax.set_xscale("log")
    ax.set_xlabel(label)


def _legend_below(
    ax: Any, handles: Sequence[Any] | None = None, labels: Sequence[str] | None = None, *, ncol: int = 2
) -> None:
    """The axes' legend under it (outside the data, inside the constrained layout)."""
    if handles is None or labels is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=ncol, frameon=False)


# --------------------------------------------------------------------------- along the parameter


@dataclass(frozen=True)
class _Along:
    """One sweep's points along its swept hyperparameter ``param``."""

    param: str
    configs: pd.DataFrame  # seed-averaged configurations, with their x position ``_x``
    trials: pd.DataFrame  # the eligible trials among them
    waiting: pd.DataFrame  # unfinished trials with a value of ``param``
    position: Callable[[Any], float]
    style: dict[str, Any]


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


def _along(report: SweepReport, param: str) -> _Along | None:
    configs = _slice_of_best(report, param)
    if not len(configs):
        return None
    table = report.table
    waiting = table[table["status"].isin(UNFINISHED_STATUSES) & table[param].notna()]
    position, style = _axis([*configs[param].tolist(), *waiting[param].tolist()])
    configs = configs.assign(_x=[position(v) for v in configs[param]]).sort_values("_x")
    trials = report.eligible()
    trials = trials[trials[param].isin(configs[param].tolist())]
    return _Along(param, configs, trials, waiting, position, style)


def _panel_metrics(report: SweepReport) -> list[str]:
    """The label-free metric of each non-oracle rule, RankMe first, without repeats."""
    metrics = [report.rank_metric] if report.rank_metric else []
    metrics += [p.metric for r, p in report.picks.items() if not r.startswith(("oracle/", "rankme/"))]
    # The consensus' Borda points are no column of the table: nothing to draw along the parameter.
    return [metric for metric in dict.fromkeys(metrics) if metric in report.table.columns]


def _draw_along_param(report: SweepReport, axes: Sequence[Any]) -> None:
    """One panel per label-free metric with a rule: its seed-averaged value along the swept
    hyperparameter, the RankMe plateau band, each rule's pick; oracle accuracy on the first."""
    assert report.param is not None
    along = _along(report, report.param)
    if along is None:
        return
    for panel, (ax, metric) in enumerate(zip(axes, _panel_metrics(report), strict=False)):
        _draw_metric(ax, along, metric)
        _draw_guides(ax, report, along, metric)
        _draw_picks(ax, report, along, metric)
        ax.set_ylabel(metric)
        _apply_axis(ax, along.style, along.param)
        ax.set_title(f"{report.name}: {metric} along {along.param.rsplit('.', 1)[-1]}", fontsize=9)
        handles, labels = ax.get_legend_handles_labels()
        if panel == 0:
            more_handles, more_labels = _draw_accuracy_twin(ax, report, along)
            handles, labels = handles + more_handles, labels + more_labels
        _legend_below(ax, handles, labels)


def _draw_metric(ax: Any, along: _Along, metric: str) -> None:
    """The seed-averaged curve, each seed as a faint dot, unfinished trials as open circles."""
    configs, trials, waiting, position = along.configs, along.trials, along.waiting, along.position
    ax.plot(configs["_x"], configs[metric], "o-", color="tab:blue", label=metric, zorder=3)
    if len(trials) > len(configs):
        ax.plot([position(v) for v in trials[along.param]], trials[metric], ".", color="tab:blue", alpha=0.35)
    if metric in waiting.columns and waiting[metric].notna().any():
        ax.plot(
            [position(v) for v in waiting[along.param]],
            waiting[metric],
            "o",
            markerfacecolor="none",
            color="0.5",
            label="unfinished trial (latest value)",
        )


def _draw_guides(ax: Any, report: SweepReport, along: _Along, metric: str) -> None:
    """The plateau band (RankMe), α-ReQ's target, and a vertical line at each oracle pick."""
    finite = along.configs[metric][np.isfinite(along.configs[metric])]
    if metric == report.rank_metric and len(finite):
        top, tolerance = float(finite.max()), report.config.selection.tolerance
        ax.axhspan(
            plateau_threshold(top, tolerance),
            top,
            color="tab:green",
            alpha=0.18,
            label=f"plateau band (within {100 * tolerance:g} % of max)",
        )
    if metric == ALPHA_REQ:
        ax.axhline(1.0, color="tab:green", linestyle=":", label="α-ReQ target α = 1")
    shown = set(along.configs[along.param])
    oracle_at: dict[float, list[str]] = {}
    for rule, pick in report.picks.items():
        if rule.startswith("oracle/") and pick.params.get(along.param) in shown:
            oracle_at.setdefault(along.position(pick.params[along.param]), []).append(rule.removeprefix("oracle/"))
    for x, probes in oracle_at.items():
        ax.axvline(x, color="tab:red", linestyle=":", linewidth=1.3, label=f"oracle pick ({', '.join(probes)})")


def _draw_picks(ax: Any, report: SweepReport, along: _Along, metric: str) -> None:
    """A marker at the pick of each label-free rule that reads ``metric``."""
    configs, param = along.configs, along.param
    for rule, pick in report.picks.items():
        value = pick.params.get(param)
        if rule.startswith("oracle/") or pick.metric != metric or value not in set(configs[param]):
            continue
        marker, colour = _PLOT_STYLE.get(rule, ("s", "tab:orange"))
        ax.plot(
            [along.position(value)],
            [configs.loc[configs[param] == value, metric].iloc[0]],
            marker,
            color=colour,
            markersize=14 if marker == "*" else 10,
            markeredgecolor="black",
            linestyle="none",
            label=f"{rule} pick",
            zorder=4,
        )


def _draw_accuracy_twin(ax: Any, report: SweepReport, along: _Along) -> tuple[list[Any], list[str]]:
    """The oracle accuracies (in-distribution, OOD mean) on a right-hand axis; its legend."""
    twin = ax.twinx()
    for accuracy, fmt in ((report.id_metric, "s--"), (OOD_MEAN, "x--")):
        if accuracy and accuracy in along.configs.columns:
            twin.plot(
                along.configs["_x"],
                100 * along.configs[accuracy],
                fmt,
                color="tab:orange",
                label=f"{accuracy} (%)",
            )
    twin.set_ylabel("oracle accuracy (%)", color="tab:orange")
    handles, labels = twin.get_legend_handles_labels()
    return list(handles), list(labels)


# --------------------------------------------------------------------------- scatter and spectra


def _scatter_accuracy(ax: Any, report: SweepReport, kind: str, *, colour: str) -> None:
    """One sweep's trials (accuracy against RankMe, τ in the label), its picks circled."""
    accuracy = report.id_metric if kind == "id" else OOD_MEAN
    rank = report.rank_metric
    if accuracy not in report.table.columns:
        return
    trials = report.eligible()
    corr = report.correlations
    tau = corr.loc[(corr["metric"] == RANKME_EMBEDDING) & (corr["oracle"] == accuracy), "kendall_tau"]
    label = report.name + (f" (τ={tau.iloc[0]:+.2f})" if len(tau) and np.isfinite(tau.iloc[0]) else "")
    ax.scatter(trials[rank], 100 * trials[accuracy], color=colour, alpha=0.75, label=label)
    for rule in ("rankme/plateau", "oracle/linear" if kind == "id" else "oracle/ood"):
        pick = report.picks.get(rule)
        if pick is None:
            continue
        chosen = trials[trials["trial_id"].isin(pick.trial_ids)]
        ax.scatter(
            chosen[rank],
            100 * chosen[accuracy],
            marker=_PLOT_STYLE[rule][0],
            s=170,
            facecolor="none",
            edgecolor=colour,
            linewidth=1.8,
        )


def _draw_spectra(ax: Any, report: SweepReport) -> None:
    """Every eligible trial's normalised spectrum: grey, the picked ones in colour."""
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
            what = trial_id if value is None else f"{param.rsplit('.', 1)[-1]}={format_value(value)}"
            # Many rules may pick one trial: wrap, or the legend squeezes the axes away.
            label = textwrap.fill(f"{what}: " + ", ".join(picked[trial_id]), width=60)
            ax.loglog(k, sigma / sigma[0], color=f"C{colour}", linewidth=2, label=label)
            colour += 1
        else:
            ax.loglog(k, sigma / sigma[0], color="0.6", linewidth=0.8, alpha=0.7)
