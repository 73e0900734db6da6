"""Growing a restored sweep: the only code that edits Ray Tune's saved state.

``Tuner.restore`` keeps the trial budget the sweep started with: Tune restores it from the
search algorithm's saved state after reading the new one, and offers no way to raise it. So
:func:`grow` raises the budget inside that saved state. It reads and writes Tune's private
formats, written for the Ray release :data:`WRITTEN_FOR_RAY`; on another release it refuses
with a :class:`~sweeper.errors.SweepError` that names the files it would edit.
"""

from __future__ import annotations

import copy
import math

import ray
from ray import cloudpickle, tune

from sweeper.config import SweeperConfig
from sweeper.errors import SweepError
from sweeper.storage import SweepLocation

WRITTEN_FOR_RAY = "2.60"
GRID_STATE = "basic-variant-state-*.json"  # BasicVariantGenerator (grid search)
SEARCHER_STATE = "search_gen_state-*.json"  # SearchGenerator (Optuna, random)


def grow(location: SweepLocation, config: SweeperConfig, *, had: int) -> int:
    """Raise a restored sweep's trial budget from ``had`` to ``search.num_samples``; return how
    many trials that adds (0 when the budget did not grow).

    The Optuna/random searcher goes on proposing (the study continues); a grid gains one more
    repeat per added sample, each with its own seed, exactly as a sweep started with the larger
    ``num_samples``.

    Raises:
        SweepError: If this Ray is not the release the edit was written for, or the sweep holds
            no saved search state.
    """
    search = config.search
    wanted = search.num_samples
    if wanted <= had:
        return 0
    pattern = GRID_STATE if search.algorithm == "grid" else SEARCHER_STATE
    _check_ray_version(config, had=had, pattern=pattern)
    names = location.glob(pattern)  # Tune names them by session time: the last is the newest
    if not names:
        raise SweepError(
            f"cannot extend {config.name!r} to search.num_samples={wanted}: {location.uri} holds no saved "
            f"search state ({pattern}); resume it with search.num_samples={had}"
        )
    state = cloudpickle.loads(location.read_bytes(names[-1]))
    added = _grow_grid(state, config, had=had) if search.algorithm == "grid" else _grow_searcher(state, wanted)
    location.write_bytes(names[-1], cloudpickle.dumps(state))
    return added


def check_search_state(location: SweepLocation, config: SweeperConfig) -> None:
    """Refuse a resume whose saved search state is missing or unreadable: ``Tuner.restore``
    would log it and start the search over (every grid point trained again).

    Raises:
        SweepError: Naming the file and the fix.
    """
    pattern = GRID_STATE if config.search.algorithm == "grid" else SEARCHER_STATE
    names = location.glob(pattern)
    fix = "restore the directory from a backup, or start the sweep again under a new --name (nothing was changed)"
    if not names:
        raise SweepError(f"{location.uri}/{pattern}: Ray Tune's saved search state is missing: {fix}")
    try:
        cloudpickle.loads(location.read_bytes(names[-1]))
    except Exception as exc:  # what a damaged pickle raises varies with the damage
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SweepError(
            f"{location.uri}/{names[-1]}: Ray Tune's saved search state is damaged ({type(exc).__name__}: "
            f"{reason}): {fix}"
        ) from None


def _check_ray_version(config: SweeperConfig, *, had: int, pattern: str) -> None:
    running = ".".join(ray.__version__.split(".")[:2])
    if running != WRITTEN_FOR_RAY:
        raise SweepError(
            f"cannot extend {config.name!r} to search.num_samples={config.search.num_samples}: growing a sweep "
            f"edits Ray Tune's saved search state ({pattern} in the sweep directory), written for Ray "
            f"{WRITTEN_FOR_RAY}.x, and this is Ray {ray.__version__}; resume it with search.num_samples={had}, "
            f"or with Ray {WRITTEN_FOR_RAY}"
        )


def _grow_grid(state: dict, config: SweeperConfig, *, had: int) -> int:
    """A ``BasicVariantGenerator``'s state gains one grid iterator: the added repeats' seeds."""
    from ray.tune.search.basic_variant import _TrialIterator

    seeds = [config.seed + repeat for repeat in range(had, config.search.num_samples)]
    spec = copy.deepcopy(state["_iterators"][-1].unresolved_spec)
    spec["config"]["seed"] = tune.grid_search(seeds)
    state["_iterators"].append(
        _TrialIterator(
            uuid_prefix=state["_uuid_prefix"],
            num_samples=1,
            unresolved_spec=spec,
            constant_grid_search=state["_constant_grid_search"],
            start=state["_total_samples"],
            random_state=state["_random_state"],
        )
    )
    added = len(seeds) * math.prod(len(values.values) for values in config.search.space.values())
    state["_total_samples"] += added
    state["_finished"] = False
    return added


def _grow_searcher(state: dict, wanted: int) -> int:
    """A ``SearchGenerator``'s state gets the larger budget and is no longer finished."""
    added = wanted - state["total_samples"]
    state["total_samples"] = wanted
    state["finished"] = False
    return added
