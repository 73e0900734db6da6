"""Uncertainty from seeds: per-configuration mean ± std, and a paired bootstrap over seeds.

Pure functions (pandas/numpy in, frames/arrays/floats out), used by every report output: the
markdown, the CSV/JSON and the comparison of several sweeps. The statistics were fixed before
any benchmark was run; they are not tuned:

* **Seeds.** Trials of one configuration differ only by their seed. Grid repeats give seed
  ``config.seed + r`` to repeat ``r`` of *every* configuration, so seed ``r`` of configuration
  A and seed ``r`` of configuration B are paired (same data order, same initialisation seed).
* **Per configuration:** mean and sample standard deviation (``ddof = 1``; NaN with one seed)
  over its seeds of every metric and accuracy column; NaN and ±inf count as missing.
* **Paired bootstrap over seed indices** (Efron & Tibshirani, *An Introduction to the
  Bootstrap*, 1993, ch. 13, percentile intervals): replicate ``b`` draws ``S`` seed indices
  with replacement, ``numpy.random.default_rng(0).integers(0, S, size=(B, S))[b]``, the same
  draw for every configuration, and recomputes every configuration's mean over the drawn
  seeds (with their multiplicity; a configuration missing a drawn seed uses the seeds it has,
  and is NaN in a replicate that drew none of them). ``B = 2000``. The 95 % interval of a
  statistic is the 2.5th and 97.5th percentile (numpy's linear interpolation) of its finite
  replicates. Selection picks are held fixed: they are never recomputed inside the bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweeper.selection import aggregate_seeds

BOOTSTRAP_REPLICATES = 2000
BOOTSTRAP_RNG_SEED = 0
CONFIDENCE = 0.95
NO_UNCERTAINTY = "no uncertainty known (one seed)"
N_SEEDS = "n_seeds"
TRIAL_IDS = "trial_ids"
_DEFAULT_SEED_KEYS: tuple[str, ...] = ("seed",)
_PAIR_BLOCK = 1_000_000  # entries of one block of pairwise sign matrices in kendall_tau_b


@dataclass(frozen=True, eq=False)
class SeedCube:
    """The eligible trials of a sweep as a (configuration x seed x column) array.

    Attributes:
        configs: One row per configuration, as :func:`sweeper.selection.aggregate_seeds`
            returns them (same order): the non-seed hyperparameters, ``trial_ids``, ...
        keys: The non-seed hyperparameters: what tells configurations apart.
        seeds: The distinct seeds of the eligible trials, sorted; one tuple of seed-column
            values each (``()`` when the table has no seed column: one seed).
        columns: The metric and accuracy columns, in the order of the last axis.
        values: ``values[c, s, k]``: column ``k`` of configuration ``c`` at seed ``s`` (the
            mean of its trials with that seed), NaN where missing.
        present: ``present[c, s]``: configuration ``c`` has an eligible trial with seed ``s``.
    """

    configs: pd.DataFrame
    keys: tuple[str, ...]
    seeds: tuple[tuple[object, ...], ...]
    columns: tuple[str, ...]
    values: np.ndarray
    present: np.ndarray

    @property
    def n_seeds(self) -> int:
        """``S``: how many distinct seeds the eligible trials have (0 without trials)."""
        return len(self.seeds)

    def config_index(self, trial_ids: Sequence[str]) -> int | None:
        """The row of the configuration whose eligible trials are ``trial_ids``."""
        wanted = tuple(trial_ids)
        for index, ids in enumerate(self.configs[TRIAL_IDS]):
            if tuple(ids) == wanted:
                return index
        return None

    def column_index(self, column: str) -> int | None:
        return self.columns.index(column) if column in self.columns else None


def seed_cube(
    table: pd.DataFrame,
    *,
    params: Sequence[str],
    columns: Sequence[str],
    seed_keys: Sequence[str] = _DEFAULT_SEED_KEYS,
) -> SeedCube:
    """Arrange the eligible trials of ``table`` by configuration and seed.

    Args:
        table: The trial table (``trials.csv``).
        params: The searched hyperparameter columns, the seed columns among them.
        columns: The numeric columns to keep (metrics, accuracies); absent ones are ignored.
        seed_keys: Names of the seed columns among ``params``.
    """
    configs = aggregate_seeds(table, params=params, seed_keys=seed_keys)
    keys = tuple(k for k in dict.fromkeys(params) if k not in seed_keys)
    kept = tuple(c for c in dict.fromkeys(columns) if c in table.columns)
    row_of = {trial_id: index for index, ids in enumerate(configs[TRIAL_IDS]) for trial_id in ids}
    if not row_of:
        empty = np.zeros((len(configs), 0, len(kept)))
        return SeedCube(configs, keys, (), kept, empty, np.zeros((len(configs), 0), dtype=bool))
    ids = table["trial_id"].astype(str)
    rows = table[ids.isin(list(row_of)).to_numpy()]
    seed_columns = [k for k in dict.fromkeys(params) if k in seed_keys]
    seed_of = [tuple(_plain(v) for v in values) for values in zip(*(rows[k] for k in seed_columns), strict=True)]
    if not seed_columns:
        seed_of = [()] * len(rows)
    seeds = tuple(sorted(set(seed_of), key=lambda s: tuple(_sort_key(v) for v in s)))
    seed_index = {seed: index for index, seed in enumerate(seeds)}
    config_at = np.array([row_of[t] for t in rows["trial_id"].astype(str)], dtype=int)
    seed_at = np.array([seed_index[s] for s in seed_of], dtype=int)

    shape = (len(configs), len(seeds), len(kept))
    sums, counts = np.zeros(shape), np.zeros(shape)
    present = np.zeros(shape[:2], dtype=bool)
    present[config_at, seed_at] = True
    for k, column in enumerate(kept):
        values = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float)
        finite = np.isfinite(values)
        np.add.at(sums[:, :, k], (config_at[finite], seed_at[finite]), values[finite])
        np.add.at(counts[:, :, k], (config_at[finite], seed_at[finite]), 1.0)
    values = np.divide(sums, counts, out=np.full(shape, np.nan), where=counts > 0)
    return SeedCube(configs, keys, seeds, kept, values, present)


def seed_summary(cube: SeedCube) -> pd.DataFrame:
    """Mean and sample std (``ddof = 1``) over its seeds of every column, per configuration.

    Returns:
        One row per configuration (the order of ``cube.configs``): its non-seed
        hyperparameters, ``n_seeds`` (seeds with an eligible trial), ``trial_ids``, then for
        each column ``<column>`` (the mean) and ``<column> std`` (NaN with fewer than two
        finite values).
    """
    configs = cube.configs
    frame = configs[list(cube.keys)].copy()
    frame[N_SEEDS] = cube.present.sum(axis=1).astype(int)
    frame[TRIAL_IDS] = configs[TRIAL_IDS]
    finite = np.isfinite(cube.values)
    counts = finite.sum(axis=1)
    filled = np.where(finite, cube.values, 0.0)
    means = np.divide(filled.sum(axis=1), counts, out=np.full(counts.shape, np.nan), where=counts > 0)
    squares = np.where(finite, (cube.values - means[:, None, :]) ** 2, 0.0).sum(axis=1)
    stds = np.sqrt(np.divide(squares, counts - 1, out=np.full(counts.shape, np.nan), where=counts > 1))
    for k, column in enumerate(cube.columns):
        frame[column] = means[:, k]
        frame[f"{column} std"] = stds[:, k]
    return frame.reset_index(drop=True)


def bootstrap_means(
    cube: SeedCube,
    *,
    replicates: int = BOOTSTRAP_REPLICATES,
    rng_seed: int = BOOTSTRAP_RNG_SEED,
) -> np.ndarray:
    """Every configuration's mean of every column in each paired bootstrap replicate.

    Replicate ``b`` uses the seed indices ``default_rng(rng_seed).integers(0, S, size=(B, S))[b]``
    for every configuration at once (the pairing); a drawn seed a configuration lacks is
    skipped, as are missing values.

    Returns:
        An array of shape ``(replicates, configurations, columns)``; NaN where a replicate
        drew none of a configuration's seeds with a finite value.
    """
    n_seeds = cube.n_seeds
    shape = (replicates, len(cube.configs), len(cube.columns))
    if n_seeds == 0:
        return np.full(shape, np.nan)
    draws = np.random.default_rng(rng_seed).integers(0, n_seeds, size=(replicates, n_seeds))
    weights = np.zeros((replicates, n_seeds))
    np.add.at(weights, (np.arange(replicates)[:, None], draws), 1.0)
    finite = np.isfinite(cube.values)
    totals = np.einsum("bs,csk->bck", weights, np.where(finite, cube.values, 0.0))
    counts = np.einsum("bs,csk->bck", weights, finite.astype(float))
    return np.divide(totals, counts, out=np.full(shape, np.nan), where=counts > 0)


def percentile_interval(replicates: np.ndarray, *, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile interval of the finite replicates: the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles (``(nan, nan)`` when no replicate is finite)."""
    values = np.asarray(replicates, dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return math.nan, math.nan
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def mean_replicates(replicates: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of several statistics' replicates, replicate by replicate (NaN if any is)."""
    return np.mean(np.stack([np.asarray(r, dtype=float) for r in replicates]), axis=0)


def contains_zero(low: float, high: float) -> bool | None:
    """Whether ``[low, high]`` contains 0 (``None`` when the interval is unknown)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return low <= 0.0 <= high


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's τ-b of ``x`` and ``y`` along the last axis, for every leading index at once.

    Kendall, *The treatment of ties in ranking problems*, Biometrika 1945:
    ``τ_b = Σ_{i<j} sgn(x_i - x_j) sgn(y_i - y_j) / sqrt(N_x N_y)``, with ``N_x`` (``N_y``)
    the pairs not tied in ``x`` (``y``); scipy's ``kendalltau`` statistic. Only positions
    where both are finite count; NaN with fewer than three such positions or a constant side.
    """
    x, y = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    lead, n = x.shape[:-1], x.shape[-1]
    flat_x, flat_y = x.reshape(-1, n), y.reshape(-1, n)
    # Pairwise sign matrices are (rows, n, n): bound their memory by working in blocks.
    block = max(1, _PAIR_BLOCK // max(1, n * n))
    taus = [_tau_b_rows(flat_x[i : i + block], flat_y[i : i + block]) for i in range(0, len(flat_x), block)]
    return np.concatenate(taus).reshape(lead) if taus else np.full(lead, np.nan)


def _tau_b_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`kendall_tau_b` of each row of two 2-D arrays."""
    valid = np.isfinite(x) & np.isfinite(y)
    x, y = np.where(valid, x, 0.0), np.where(valid, y, 0.0)
    n = x.shape[-1]
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    pairs = valid[:, :, None] & valid[:, None, :] & upper
    sx = np.where(pairs, np.sign(x[:, :, None] - x[:, None, :]), 0.0)
    sy = np.where(pairs, np.sign(y[:, :, None] - y[:, None, :]), 0.0)
    both = (sx * sy).sum(axis=(1, 2))
    untied = np.sqrt((sx != 0).sum(axis=(1, 2)) * (sy != 0).sum(axis=(1, 2)).astype(float))
    tau = np.divide(both, untied, out=np.full(both.shape, np.nan), where=untied > 0)
    return np.where(valid.sum(axis=1) >= 3, tau, np.nan)


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _sort_key(value: object) -> tuple[int, float | str]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value))
    return (1 if value is not None else 2, str(value))
