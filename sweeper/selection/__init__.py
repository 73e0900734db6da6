"""Selection rules over the table of trials: max, plateau, band, the rank gate, the noise-aware
plateau, the Borda consensus, and the labelled oracle.

The input of every function is the trial table, exactly what ``trials.csv`` holds: a column
``trial_id``, one column per searched hyperparameter named by its dotted config key
(``method.params.cov_weight``, ``train.lr``, ...), the final metrics (``rankme/embedding``,
``label_free/alpha_req``, ``oracle/linear/digits``, ...), ``status``, ``epochs_done`` and
``wall_s``.

Rules shared by every function here:

* **Eligibility.** Only rows whose ``status`` is ``ok`` are ever used; diverged, collapsed,
  failed and still-running trials are dropped before anything else, even when their metric
  is the largest.
* **Seeds.** Every searched column whose name is in ``seed_keys`` is a seed: rows that differ
  only by their seeds are one *configuration*, and its metric is the mean over its seeds.
  The mean skips missing values.
* **Missing values.** NaN and ±inf metric values count as missing: they never enter a mean
  and a configuration whose mean is missing is never picked on that metric. A missing
  hyperparameter value (a conditional parameter) is ``None`` in :attr:`Pick.params`.
* **Ties** are broken deterministically. ``max`` and ``band``: the lexicographically smallest
  tuple of hyperparameter values (in the order of ``params``; numbers sort before strings,
  missing values last), then the smallest trial id. ``plateau``: the earlier value along the
  ordered hyperparameter, then the higher metric, then as for ``max``.
* A table without eligible rows gives ``None`` (or ``{}``), never an error; a single trial is
  a valid sweep.

The package is pure Python + numpy/pandas (layer L0): it must not import torch, ray, mlflow
or optuna; of the package it imports only :mod:`sweeper.names` (statuses and metric keys).

References:
    Garrido, Balestriero, Najman, LeCun. *RankMe: Assessing the Downstream Performance of
    Pretrained Self-Supervised Representations by Their Rank.* ICML 2023, §4.1 and Fig. 4
    (select the highest rank; along an ordered hyperparameter, the value that first reaches
    the rank plateau).

    Agrawal, Mondal, Ghosh, Richards. *α-ReQ: Assessing Representation Quality in
    Self-Supervised Learning by measuring eigenspectrum decay.* NeurIPS 2022 (good
    representations have a power-law decay coefficient α close to 1).

    Thilak et al. *LiDAR: Sensing Linear Probing Performance in Joint Embedding SSL
    Architectures.* ICLR 2024 (the rank gate's second criterion).

    Tsitsulin, Munkhoeva, Perozzi. *Unsupervised Embedding Quality Evaluation.* 2023, and
    Facco, d'Errico, Rodriguez, Laio. *Estimating the intrinsic dimension of datasets by a
    minimal neighborhood information.* Sci. Rep. 2017 (metrics of the consensus).
"""

from sweeper.selection._all import LABEL_FREE_DIRECTIONS, gap_to_oracle, select_all
from sweeper.selection._rules import Order, plateau_threshold, select_band, select_max, select_plateau
from sweeper.selection._rules_combined import (
    BORDA,
    RANK_GATE,
    Direction,
    seed_spread,
    select_consensus,
    select_noise_plateau,
    select_rank_gate,
)
from sweeper.selection._table import Pick, aggregate_seeds

__all__ = [
    "BORDA",
    "LABEL_FREE_DIRECTIONS",
    "RANK_GATE",
    "Direction",
    "Order",
    "Pick",
    "aggregate_seeds",
    "gap_to_oracle",
    "plateau_threshold",
    "seed_spread",
    "select_all",
    "select_band",
    "select_consensus",
    "select_max",
    "select_noise_plateau",
    "select_plateau",
    "select_rank_gate",
]
