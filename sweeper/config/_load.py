"""Loading a config: the YAML file, ``--set`` overrides, unknown keys, the typed search space,
and one :class:`ConfigError` line for whatever is wrong."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sweeper.config._checks import suggest
from sweeper.config._sweep import SweeperConfig
from sweeper.errors import ConfigError
from sweeper.yamlio import read_yaml


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse ``--set`` arguments ``dotted.key=value``; values are read as YAML scalars/lists
    (as config files are: ``1e-4`` is a float)."""
    from sweeper.storage import redact_credentials

    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {redact_credentials(pair)!r}: write it as dotted.key=value")
        source = f"--set {key.strip()}: value {redact_credentials(raw)!r}"
        overrides[key.strip()] = read_yaml(raw, source=source) if raw.strip() else None
    return overrides


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | Sequence[str] = (),
    data: Mapping[str, Any] | None = None,
    resolve: bool = True,
) -> SweeperConfig:
    """Read a YAML config (or take ``data``), apply overrides and validate it.

    The search space comes back typed: each grid value (and range bound) is validated as, and
    converted to, its hyperparameter's type (``"1e-4"`` for ``train.lr`` is ``0.0001``).

    Components are resolved (:mod:`sweeper.registry`): the ``plugins`` imported, each method,
    backbone and data-set name turned into its canonical target, a plugin method's params
    validated by its class, data roots checked. ``resolve=False`` reads a saved sweep's config
    as it is, importing nothing and checking no data root (``sweeper status``, ``compare``).
    A plugin module that is not importable by name is looked for beside the config file, then
    in the current directory.

    Raises :class:`ConfigError` with one line naming the key and the fix.
    """
    search = ()
    if data is None:
        if path is None:
            raise ConfigError("no config given: pass a YAML file, e.g. configs/quickstart.yaml")
        data = _read_file(Path(path))
        search = (Path(path).expanduser().resolve().parent,)
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    config = validate(apply_overrides(copy.deepcopy(dict(data)), overrides), resolve=resolve, search_dirs=search)
    return _typed_search_space(config, search_dirs=search)


def trial_config(base: Mapping[str, Any], params: Mapping[str, Any]) -> SweeperConfig:
    """One trial's config: the sweep's saved config ``base`` (already validated at load, with
    every grid value checked) with the trial's sampled ``params`` applied, validated once
    (which imports its plugins, in the trial's process)."""
    return validate(apply_overrides(copy.deepcopy(dict(base)), params))


def validate(data: dict[str, Any], *, resolve: bool = True, search_dirs: Sequence[Path] = ()) -> SweeperConfig:
    """``data`` as a :class:`SweeperConfig`; any problem is one :class:`ConfigError` line."""
    from sweeper.storage import redact_credentials

    _check_unknown_keys(data, SweeperConfig, prefix="")
    context = {"resolve": resolve, "search_dirs": tuple(search_dirs)}
    try:
        return SweeperConfig.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(redact_credentials(_describe(exc))) from None


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with each ``dotted.key: value`` of ``overrides`` set (in place), sections created."""
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"{dotted}: {part!r} is a value, not a section")
            node = child
        node[leaf] = value
    return data


def _read_file(file: Path) -> Mapping[str, Any]:
    if not file.is_file():
        raise ConfigError(f"config file {str(file)!r} not found: check the path")
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot be read ({exc.strerror}): check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{file}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): save the file as UTF-8"
        ) from None
    data = read_yaml(text, source=str(file))
    if not isinstance(data, Mapping):
        raise ConfigError(f"{file}: the top level must be a mapping of keys (name:, data:, ...)")
    return data


def _typed_search_space(config: SweeperConfig, *, search_dirs: Sequence[Path]) -> SweeperConfig:
    """Every value a trial can receive must make a valid config: a bad grid value (or range
    bound) fails here, not inside a trial hours into the sweep. Each value comes back as its
    hyperparameter's type, so the plateau rule orders numbers, never strings
    (``["10", "9", "0.5"]``)."""
    plain = config.to_dict()
    for key, spec in config.search.space.items():
        if spec.values is not None:
            plain["search"]["space"][key]["values"] = [
                _typed_value(plain, key, value, resolve=config.resolved) for value in spec.values
            ]
            continue
        bounds = [
            _typed_value(plain, key, int(b) if spec.integer else b, resolve=config.resolved)
            for b in (spec.low, spec.high)
        ]
        if not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds):
            raise ConfigError(
                f"search.space.{key}: low/high ranges are for numeric hyperparameters; list its values: [...]"
            )
        if not spec.integer and all(isinstance(b, int) for b in bounds):
            raise ConfigError(f"search.space.{key}: {key} takes whole numbers: add integer: true to the range")
    return validate(plain, resolve=config.resolved, search_dirs=search_dirs)


def _typed_value(plain: dict[str, Any], key: str, value: Any, *, resolve: bool) -> Any:
    """``value`` for the hyperparameter ``key`` as the validated config holds it."""
    try:
        trial = validate(apply_overrides(copy.deepcopy(plain), {key: value}), resolve=resolve).to_dict()
    except ConfigError as exc:
        raise ConfigError(f"search.space.{key}: value {value!r} is invalid ({exc})") from None
    for part in key.split("."):
        trial = trial[part]
    if isinstance(value, bool) and not isinstance(trial, bool):  # pydantic reads True as 1.0
        raise ConfigError(f"search.space.{key}: value {value!r} is invalid ({key} takes a number, not a boolean)")
    return trial


def _check_unknown_keys(data: Any, model: type[BaseModel], *, prefix: str) -> None:
    if not isinstance(data, Mapping):
        return
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            where = f"{prefix}{key}"
            raise ConfigError(f"{where}: unknown key{suggest(str(key), fields)}")
        annotation = fields[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _check_unknown_keys(value, annotation, prefix=f"{prefix}{key}.")


def _describe(exc: ValidationError) -> str:
    """The first validation error as ``dotted.key: message`` (the input echoed where it helps)."""
    error = exc.errors()[0]
    loc = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "required key is missing: add it"
    elif error["type"].startswith(("literal_error", "enum")):
        message = f"{message} (got {error.get('input')!r})"
    elif "input" in error and error["type"] not in {"value_error", "assertion_error", "sweeper"}:
        message = f"{message} (got {error['input']!r})"
    return f"{loc}: {message}" if loc else message
