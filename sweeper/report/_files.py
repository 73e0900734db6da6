"""The report files: one sweep's in its directory (:func:`write_report`), several sweeps'
side by side (:func:`write_comparison`). Every file, the PNGs included, goes through
:func:`sweeper.storage.write_atomic`: a crash leaves the previous version or the new one."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweeper.report._compare import comparison_rows, rule_gaps, unique_names
from sweeper.report._markdown import format_summary
from sweeper.report._markdown_compare import format_comparison
from sweeper.report._model import SweepReport, summary_rows
from sweeper.report._plots import accuracy_vs_rankme_png, along_param_png, comparison_gaps_png, spectra_png
from sweeper.report._seeds import BOOTSTRAP_REPLICATES, BOOTSTRAP_RNG_SEED, CONFIDENCE, NO_UNCERTAINTY
from sweeper.storage import write_atomic

# How the intervals of the reports are made (sweeper.report._seeds), as the JSON records it.
_UNCERTAINTY = {
    "method": "paired percentile bootstrap over seed indices, picks held fixed",
    "replicates": BOOTSTRAP_REPLICATES,
    "rng": f"numpy.random.default_rng({BOOTSTRAP_RNG_SEED})",
    "confidence": CONFIDENCE,
}


def write_report(report: SweepReport) -> list[Path]:
    """Write ``report.md``/``.csv``/``.json`` and the plots into ``report.directory``.

    Plots: ``rankme_vs_param.png``, ``accuracy_vs_rankme.png``, and ``spectra.png`` when the
    report has spectra; each only when there is something to draw.

    Returns:
        The files written: the three reports, then the plots.

    Raises:
        ValueError: If the report has no directory (build it with ``directory=``).
    """
    if report.directory is None:
        raise ValueError(f"the report of sweep {report.name!r} has no directory to write to")
    directory = report.directory
    directory.mkdir(parents=True, exist_ok=True)
    plots = _write_plots(
        directory,
        {
            "rankme_vs_param.png": along_param_png([report]),
            "accuracy_vs_rankme.png": accuracy_vs_rankme_png([report]),
            "spectra.png": spectra_png([report]),
        },
    )
    rows = summary_rows(report)
    document = {
        "sweep": report.name,
        "directory": str(directory),
        "trials": len(report.table),
        "status": report.status_counts(),
        "unfinished": report.unfinished(),
        "n_seeds": report.n_seeds,
        "oracle_skipped": report.oracle_skipped,
        "uncertainty": _UNCERTAINTY if report.n_seeds > 1 else NO_UNCERTAINTY,
        "selections": rows,
        "configurations": _records(report.configurations) if report.n_seeds > 1 else [],
        "correlations": report.correlations.to_dict(orient="records"),
        "plots": [p.name for p in plots],
    }
    return [
        write_atomic(directory / "report.md", format_summary(report) + _plot_links(plots)),
        write_atomic(directory / "report.csv", pd.DataFrame(rows).to_csv(index=False)),
        write_atomic(directory / "report.json", _json(document)),
        *plots,
    ]


def write_comparison(reports: Sequence[SweepReport], directory: Path) -> list[Path]:
    """Write ``compare.md``/``.csv``/``.json`` and the plots of several sweeps into
    ``directory``; returns the files written (the three reports, then the plots)."""
    directory.mkdir(parents=True, exist_ok=True)
    plots = _write_plots(
        directory,
        {
            "compare_gaps.png": comparison_gaps_png(reports),
            "accuracy_vs_rankme.png": accuracy_vs_rankme_png(reports),
            "rankme_vs_param.png": along_param_png(reports),
            "spectra.png": spectra_png(reports),
        },
    )
    rows = comparison_rows(reports)
    document = {
        "sweeps": [
            {
                "name": r.name,
                "directory": str(r.directory) if r.directory else None,
                "trials": len(r.table),
                "status": r.status_counts(),
                "unfinished": r.unfinished(),
                "n_seeds": r.n_seeds,
                "correlations": r.correlations.to_dict(orient="records"),
            }
            for r in reports
        ],
        "uncertainty": _UNCERTAINTY,
        "selections": rows,
        "rules": _rule_records(reports),
        "plots": [p.name for p in plots],
    }
    return [
        write_atomic(directory / "compare.md", format_comparison(reports) + _plot_links(plots)),
        write_atomic(directory / "compare.csv", pd.DataFrame(rows).to_csv(index=False)),
        write_atomic(directory / "compare.json", _json(document)),
        *plots,
    ]


def _rule_records(reports: Sequence[SweepReport]) -> list[dict[str, Any]]:
    """Per rule, best mean gap first: in-distribution gaps per sweep, mean, worst, W/T/L."""
    names = unique_names(reports)
    return [
        {
            "rule": rule.rule,
            "mean_gap": rule.mean,
            "mean_gap_low": rule.low,
            "mean_gap_high": rule.high,
            "worst_gap": rule.worst,
            "worst_sweep": rule.worst_sweep,
            "wins": rule.wins,
            "ties": rule.ties,
            "losses": rule.losses,
            "gaps": {
                name: {"gap": gap.gap, "gap_low": gap.low, "gap_high": gap.high, "within_noise": gap.within_noise}
                for name in names
                if (gap := rule.gaps.get(name)) is not None
            },
        }
        for rule in rule_gaps(reports, kind="id")
    ]


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _write_plots(directory: Path, figures: Mapping[str, bytes | None]) -> list[Path]:
    """Each figure that has something to draw, as ``directory / name``."""
    return [write_atomic(directory / name, png) for name, png in figures.items() if png is not None]


def _plot_links(plots: Sequence[Path]) -> str:
    """The markdown images of the plots, after the report's text."""
    if not plots:
        return ""
    return "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"


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
