"""Where a sweep lives and the config it was started with (``sweeper.yaml``).

The sweep directory is ``<storage_path>/<name>/`` (:func:`sweep_location`); ``sweeper.yaml``
there holds the config the sweep last ran with. A resume may change only the keys of
:data:`RESUMABLE_CHANGES`; every other key defines the trials (:func:`changed_keys`).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import pyarrow.fs as pafs
import yaml

from sweeper.config import SweeperConfig, load_config
from sweeper.errors import ConfigError, StorageError, SweepError
from sweeper.storage import SweepLocation, is_uri
from sweeper.tracking import flatten
from sweeper.yamlio import read_yaml

CONFIG_FILE = "sweeper.yaml"
# Keys a resumed sweep may change; everything else defines the trials and must stay.
RESUMABLE_CHANGES = (
    "search.confirm",
    "search.max_concurrent",
    "search.max_failures",
    "search.num_samples",
    "tracking.uri",
)
# Set from where the sweep is found (a moved or remounted sweep resumes in place).
_WHERE_KEYS = {"storage_path", "name"}


def sweep_location(config: SweeperConfig) -> SweepLocation:
    """Where the sweep's trials, checkpoints and files live: ``<storage_path>/<name>``, a local
    directory or one in a pyarrow filesystem (``s3://...``)."""
    return SweepLocation.of(config.storage_path).child(config.name)


def as_location(where: SweepLocation | Path | str) -> SweepLocation:
    """``where`` (a path, a URI or a location) as a location."""
    return where if isinstance(where, SweepLocation) else SweepLocation.of(where)


def tune_filesystem(location: SweepLocation) -> pafs.FileSystem | None:
    """Ray Tune's ``storage_filesystem``: None for a local path (Tune's own default)."""
    return None if location.is_local else location.filesystem


def load_sweep_config(name_or_path: str | Path, *, storage_path: str | Path = "./sweeps") -> SweeperConfig:
    """The config a sweep was started with, from its directory or its name under ``storage_path``.

    ``storage_path`` and ``name`` are set from where the sweep was found, so a sweep directory
    that was moved or mounted elsewhere resumes in place. The config is read as saved, its
    components not resolved: reading a sweep (status, compare, a resume's checks) needs neither
    its data nor its plugins on this machine; a resumed run checks both in its preflight.

    Raises:
        SweepError: If no sweep directory (one holding ``sweeper.yaml``) is found, or its
            ``sweeper.yaml`` is damaged (not UTF-8, not YAML, not a mapping).
    """
    candidates = [SweepLocation.of(name_or_path)]
    if not isinstance(name_or_path, Path) and "://" not in str(name_or_path):
        candidates.append(SweepLocation.of(storage_path).child(str(name_or_path)))
    for location in candidates:
        try:
            if not location.is_file(CONFIG_FILE):
                continue
            raw = location.read_bytes(CONFIG_FILE)
        except StorageError as exc:
            raise SweepError(str(exc)) from None
        source = f"{location.uri}/{CONFIG_FILE}"
        restore = "restore the config the sweep was started with there"
        try:
            data = read_yaml(raw.decode("utf-8"), source=source)
        except UnicodeDecodeError:
            raise SweepError(f"{source}: damaged, not UTF-8 text: {restore}") from None
        except ConfigError as exc:
            raise SweepError(f"{exc}, or {restore}") from None
        if not isinstance(data, Mapping):
            raise SweepError(f"{source}: damaged, not a mapping of config keys: {restore}")
        try:
            return load_config(
                data=_absolute_stores(data, location, source=source),
                overrides={"storage_path": location.parent_uri(), "name": location.name},
                resolve=False,
            )
        except ConfigError as exc:  # edited by hand, or saved by another version
            raise SweepError(f"{source}: {exc}") from None
    raise SweepError(
        f"no sweep {str(name_or_path)!r}: give its directory or its name under {storage_path} "
        f"(a sweep directory holds {CONFIG_FILE})"
    )


def _absolute_stores(data: Mapping[str, Any], location: SweepLocation, *, source: str) -> Mapping[str, Any]:
    """``data`` with the relative sqlite/journal stores of a sweep saved before configs made
    them absolute (``sqlite:///mlflow.db``) resolved against the directory the sweep was
    started from, found from its relative ``storage_path`` (``./sweeps``) and where the sweep
    is now. Refused, naming both readings, when that directory cannot be told or holds no such
    store: resolving against the current directory would split the sweep's records."""
    origin = _start_directory(data.get("storage_path"), location)
    resolved = copy.deepcopy(dict(data))
    for key in ("tracking.uri", "search.storage"):
        section, _, leaf = key.partition(".")
        value = (resolved.get(section) or {}).get(leaf) if isinstance(resolved.get(section), Mapping) else None
        relative = _relative_store_path(value) if isinstance(value, str) else None
        if relative is None:
            continue
        here = Path.cwd() / relative
        if origin is not None and (origin / relative).exists():
            resolved[section] = {**resolved[section], leaf: value.replace(str(relative), str(origin / relative), 1)}
            continue
        started = f"{origin / relative} (where the sweep was started)" if origin is not None else None
        raise SweepError(
            f"{source}: {key} {value!r} is relative, saved by an older sweeper, and "
            + (f"{started} does not exist" if started else "the directory the sweep was started from is unknown")
            + f"; it would now mean {here} (relative to this directory): write the store's absolute path there"
        )
    return resolved


def _relative_store_path(value: str) -> Path | None:
    """The relative file of ``sqlite:///FILE`` or ``journal:FILE``; None for anything else."""
    match = re.fullmatch(r"(?i)sqlite(?:\+\w+)?:///([^?]*)(\?.*)?|journal:(.*)", value)
    path = (match[1] if match[1] is not None else match[3]) if match else None
    if not path or path.startswith(("/", "~", ":memory:")):
        return None
    return Path(path)


def _start_directory(saved_storage: object, location: SweepLocation) -> Path | None:
    """The directory an old sweep was started from: where its relative ``storage_path``
    (without ``..``) leads to the directory that holds the sweep now; None when unknown."""
    if not location.is_local or not isinstance(saved_storage, str) or is_uri(saved_storage):
        return None
    relative = PurePath(os.path.normpath(saved_storage))
    holder = Path(location.path).parent
    if relative.is_absolute() or ".." in relative.parts or saved_storage.startswith("~"):
        return None
    if not relative.parts:  # storage_path "."
        return holder
    if holder.parts[-len(relative.parts) :] != relative.parts:
        return None
    return Path(*holder.parts[: -len(relative.parts)])


def save_sweep_config(location: SweepLocation, config: SweeperConfig) -> None:
    """Write ``config`` as the sweep's ``sweeper.yaml`` (atomically)."""
    location.write_bytes(CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False).encode())


def changed_keys(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two config dicts, except the resumable
    ones and those set from where the sweep lives; sorted."""
    flat_saved, flat_new = flatten(saved), flatten(new)
    return sorted(
        key
        for key in set(flat_saved) | set(flat_new)
        if flat_saved.get(key) != flat_new.get(key) and not key.startswith(RESUMABLE_CHANGES) and key not in _WHERE_KEYS
    )
