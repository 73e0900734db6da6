"""Selection reports: which trial each rule picks, how far it is from the labelled oracle, how
well each label-free metric ranks the trials, and the plots that show it.

Every function takes a :class:`SweepReport` (or a sequence of them), built once per sweep with
:meth:`SweepReport.build`; its rank-accuracy correlations are computed once and kept.

One sweep (:func:`write_report`, at the end of ``sweeper run`` and by ``sweeper compare``),
files in the sweep directory:

* ``report.md`` - the headline pick (the rule ``selection.rule`` names), the trial table (and,
  with several seeds, the configurations as mean ± std over seeds), each rule's pick with its
  accuracies and gap to the oracle, Kendall τ / Spearman ρ between every label-free metric and
  every oracle accuracy;
* ``report.csv`` - one row per rule (accuracies and gaps as fractions, not percent; ``gap_low``,
  ``gap_high``, ``within_noise``, ``n_seeds``);
* ``report.json`` - selections, configurations, correlations, trial counts and plot files;
* ``rankme_vs_param.png`` - RankMe (and each other label-free metric with a rule) along the
  swept hyperparameter, with the plateau band, each rule's pick and the oracle accuracy;
* ``accuracy_vs_rankme.png`` - oracle accuracy against RankMe, one point per trial;
* ``spectra.png`` - singular-value spectra of the picked trials (log-log).

Several sweeps (:func:`write_comparison`, ``sweeper compare A B ...``): ``compare.md`` (the
RankMe paper's Table 1: rows = selection rules ranked by mean gap, columns = sweeps, cells =
accuracy of the pick and its gap to the oracle with its interval; per rule the mean gap with its
interval, the worst gap and wins/ties/losses against RankMe's plateau rule; Kendall τ per
label-free metric and sweep), ``compare.csv`` (long form), ``compare.json``,
``compare_gaps.png`` (each rule's gap per sweep with its interval) and the three plots with
every sweep in them.

Seeds (:mod:`sweeper.report._seeds`, statistics fixed before any benchmark): with grid repeats
(``search.num_samples`` > 1) trials of one configuration differ only by ``seed``, and seed ``r``
of every configuration is paired. Every number of a configuration is its mean over seeds (± the
sample std); a pick's gap to the oracle and Kendall τ get a 95 % percentile interval from a
paired bootstrap over seed indices (B = 2000, ``numpy.random.default_rng(0)``, picks held
fixed), and a gap whose interval contains 0 is reported as within seed noise. A single-seed
sweep says that no uncertainty is known, and shows no interval.

A sweep may be partly finished: picks and correlations use the trials that finished with
``status=ok`` and every output says how many are still running, pending or not yet created.

Selection rules themselves live in :mod:`sweeper.selection`; this package only reports them.
"""

from __future__ import annotations

from sweeper.report._compare import RuleGaps, comparison_rows, rule_gaps
from sweeper.report._files import write_comparison, write_report
from sweeper.report._markdown import format_summary
from sweeper.report._markdown_compare import format_comparison
from sweeper.report._model import (
    PickGap,
    SweepReport,
    correlations,
    id_dataset,
    params_of,
    rule_label,
    rules_by_trial,
    select,
    summary_rows,
)
from sweeper.report._seeds import (
    BOOTSTRAP_REPLICATES,
    SeedCube,
    bootstrap_means,
    kendall_tau_b,
    percentile_interval,
    seed_cube,
    seed_summary,
)
from sweeper.selection import Pick
from sweeper.storage import write_atomic

__all__ = [
    "BOOTSTRAP_REPLICATES",
    "Pick",
    "PickGap",
    "RuleGaps",
    "SeedCube",
    "SweepReport",
    "bootstrap_means",
    "comparison_rows",
    "correlations",
    "format_comparison",
    "format_summary",
    "id_dataset",
    "kendall_tau_b",
    "params_of",
    "percentile_interval",
    "rule_gaps",
    "rule_label",
    "rules_by_trial",
    "seed_cube",
    "seed_summary",
    "select",
    "summary_rows",
    "write_atomic",
    "write_comparison",
    "write_report",
]
