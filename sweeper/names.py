"""The names every layer agrees on (layer L0): metric keys, trial statuses, who may be picked,
and the value Tune and Optuna maximise.

Metric keys are the contract of DESIGN.md: MLflow keys, Tune result keys and ``trials.csv``
columns alike. A trial's ``status`` is one of :data:`STATUSES`; only :data:`OK` trials are ever
selected (:func:`is_eligible`). :func:`trial_status` is the one map from what Tune knows of a
trial to its status, used by the MLflow callback and by the results reader.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "LABEL_FREE_METRICS",
    "COLLAPSED",
    "CONFIRM_PHASE",
    "DIVERGED",
    "FAILED",
    "FINISHED_STATUSES",
    "OK",
    "PENDING",
    "PHASE",
    "RANKME_EMBEDDING",
    "RANKME_EMBEDDING_CLIPPED",
    "RANKME_PROTOTYPES",
    "RANKME_REPRESENTATION",
    "RANKME_SELECTION_METRICS",
    "RUNNING",
    "SEARCH_PHASE",
    "SPECTRUM_EMBEDDING",
    "STATUSES",
    "STOPPED",
    "TRAIN_LOSS",
    "UNFINISHED_STATUSES",
    "is_eligible",
    "is_metric_key",
    "label_free_key",
    "objective_value",
    "oracle_key",
    "OOD_MEAN",
    "ORACLE_SKIPPED",
    "trial_status",
]

# --------------------------------------------------------------------------- metric keys
LABEL_FREE_METRICS: tuple[str, ...] = (
    "rankme",
    "classical_rank",
    "alpha_req",
    "lidar",
    "nesum",
    "stable_rank",
    "self_clustering",
    "coherence",
    "pseudo_condition",
    "intrinsic_dimension",
    "lidar_representation",
)
"""The label-free metrics ``evaluation.label_free`` may list (``label_free/<name>`` keys), declared
once: the config's choices and the metrics package both read this tuple."""

TRAIN_LOSS = "train/loss"
RANKME_EMBEDDING = "rankme/embedding"
RANKME_EMBEDDING_CLIPPED = "rankme/embedding_clipped"  # clipped at the representation dim (App. B)
RANKME_REPRESENTATION = "rankme/representation"
RANKME_PROTOTYPES = "rankme/prototypes"
SPECTRUM_EMBEDDING = "spectrum/embedding"  # a list: reported to Tune, never to MLflow or the CSV
# Why a trial's labelled probes did not run (no labels, no test split): a trials.csv column, the
# parent run's tag sweeper.oracle_skipped, a line of the report; absent when they ran.
ORACLE_SKIPPED = "oracle_skipped"
OOD_MEAN = "oracle/linear/ood_mean"
# RankMe as the rules read it: the clipped value where a trial reported it.
RANKME_SELECTION_METRICS: tuple[str, ...] = (RANKME_EMBEDDING_CLIPPED, RANKME_EMBEDDING)


def label_free_key(name: str) -> str:
    """``label_free/<name>`` (``classical_rank``, ``alpha_req``, ``lidar``, ...)."""
    return f"label_free/{name}"


def oracle_key(probe: str, dataset: str) -> str:
    """``oracle/<probe>/<dataset>`` (``oracle/linear/digits``, ``oracle/knn/cifar10``)."""
    return f"oracle/{probe}/{dataset}"


def is_metric_key(key: str) -> bool:
    """A scalar metric of the contract (``group/name``), not Tune's bookkeeping nor a spectrum."""
    return "/" in key and not key.startswith(("config/", "spectrum/"))


# --------------------------------------------------------------------------- statuses
OK = "ok"
DIVERGED = "diverged"
COLLAPSED = "collapsed"
STOPPED = "stopped"  # stopped early by a scheduler (ASHA, HyperBand)
FAILED = "failed"
RUNNING = "running"
PENDING = "pending"
FINISHED_STATUSES: tuple[str, ...] = (OK, DIVERGED, COLLAPSED, STOPPED, FAILED)
UNFINISHED_STATUSES: tuple[str, ...] = (RUNNING, PENDING)
STATUSES: tuple[str, ...] = FINISHED_STATUSES + UNFINISHED_STATUSES

# --------------------------------------------------------------------------- phases
# The trial table's ``phase``: a trial of the search itself, or a confirmation trial (one of the
# top configurations trained again with a new seed, ``search.confirm``).
PHASE = "phase"
SEARCH_PHASE = "search"
CONFIRM_PHASE = "confirm"


def is_eligible(status: object) -> bool:
    """Only trials that finished ``ok`` may be selected: a diverged, collapsed, stopped, failed
    or unfinished trial never is, whatever its metrics."""
    return status == OK


def trial_status(ray_state: str, last_result: Mapping[str, Any] | None, *, error_file: bool = False) -> str:
    """The sweeper status of a trial from what Tune knows of it.

    Args:
        ray_state: Tune's trial state (``TERMINATED``, ``ERROR``, ``RUNNING``, ``PENDING``, ...).
        last_result: The trial's last reported result (its ``status`` and ``epoch``), if any.
        error_file: The trial's ``error.txt`` exists (Tune's last state snapshot can predate
            the error; its error file cannot).
    """
    last = last_result or {}
    if ray_state == "TERMINATED":
        reported = last.get("status", FAILED)
        # Terminated while its last result said "running": a scheduler stopped it early.
        return STOPPED if reported == RUNNING else str(reported)
    if ray_state == "ERROR" or error_file:
        return FAILED
    if ray_state in ("PENDING", "PAUSED"):
        # Ray reloads a running trial from disk as PENDING: one that reported epochs is running.
        return RUNNING if last.get("epoch") else PENDING
    if ray_state == "RUNNING":
        return RUNNING
    return ray_state.lower()


# --------------------------------------------------------------------------- the objective
def objective_value(objective: str, metrics: Mapping[str, float]) -> float:
    """The value Tune/Optuna maximise: the metric ``objective`` (``search.objective``); RankMe of
    the embedding is clipped at the representation dimension (RankMe, App. B). NaN until first
    computed."""
    key = RANKME_EMBEDDING_CLIPPED if objective == RANKME_EMBEDDING else objective
    value = metrics.get(key)
    return math.nan if value is None else float(value)
