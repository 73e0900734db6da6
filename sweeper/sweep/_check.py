"""Checks of what a sweep is built from, before anything is written: data roots on the machine
that trains, and its components — the ``plugins``, the method, the backbone and the data sets —
imported and tried on the driver (:func:`check_components`) and on every node of a Ray cluster
(:func:`check_on_cluster`). The plugin modules that are not installed reach the Ray workers
through the job's ``runtime_env`` ``py_modules`` (:func:`plugin_runtime_env`)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from pydantic import ValidationError

from sweeper import registry
from sweeper.config import DataConfig, SweeperConfig, load_config
from sweeper.errors import ConfigError, DataError, SweeperError, SweepError

__all__ = [
    "ComponentCheck",
    "check_components",
    "check_data_root",
    "check_everywhere",
    "check_on_cluster",
    "component_listing",
    "plugin_runtime_env",
]

# Channels of the built-in data sets (a plugin's are known only once its data is loaded).
_GRAYSCALE_DATASETS = frozenset({"digits", "mnist", "fashion_mnist"})
_PLUGIN_CHANNELS = 3
# How long the component check may take on the nodes: a fresh worker per node, which starts
# Python, sets up the job's runtime_env (a pip one can take minutes on a cold node: the trials
# would wait for it too), imports torch and builds the backbone once.
CLUSTER_CHECK_TIMEOUT_S = 600.0

# What torchvision's loaders open under data.root (the files of the extracted archives).
_DATASET_FILES = {
    "cifar10": [f"cifar-10-batches-py/{name}" for name in ("data_batch_1", "data_batch_5", "test_batch")],
    "cifar100": ["cifar-100-python/train", "cifar-100-python/test"],
    "stl10": [f"stl10_binary/{name}" for name in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")],
}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def check_data_root(data: DataConfig) -> None:
    """A built-in data set's ``data.root`` must have the shape its loader reads (every trial
    would fail on it otherwise): the IDX files of Fashion-MNIST/MNIST; ImageFolder's ``train/``
    and ``val/`` with the same class folders, each holding an image; the files of an extracted
    CIFAR/STL archive. The images themselves are not read. A saved sweep's config is read
    without these checks (:func:`sweeper.sweep.load_sweep_config`): they run here, on the
    machine that trains, before anything is written."""
    problem = data.root_problem(key="data.root")
    if problem is not None:
        raise DataError(problem)
    if data.root is None or data.dataset not in {"imagefolder", *_DATASET_FILES}:
        return
    root = Path(data.root)
    where = f"data.root {str(root)!r}"
    if data.dataset != "imagefolder":
        missing = [name for name in _DATASET_FILES[data.dataset] if not (root / name).is_file()]
        if missing:
            raise DataError(f"{where} has no {missing[0]}: put the extracted {data.dataset} data set there")
        return
    classes: dict[str, list[str]] = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise DataError(
                f"{where} has no {split}/ directory: an imagefolder root needs train/<class>/... and val/<class>/..."
            )
        classes[split] = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
        empty = next((name for name in classes[split] if not _holds_an_image(folder / name)), None)
        if not classes[split] or empty is not None:
            what = f"{split}/{empty}/ holds no image" if empty else f"{split}/ holds no class folder"
            raise DataError(
                f"{where}: {what} ({', '.join(_IMAGE_SUFFIXES)}): an imagefolder root needs {split}/<class>/<image>"
            )
    if classes["train"] != classes["val"]:
        raise DataError(f"{where}: train/ and val/ must hold the same class folders")


def _holds_an_image(folder: Path) -> bool:
    return any(
        entry.is_file() and entry.name.lower().endswith(_IMAGE_SUFFIXES) for entry in os.scandir(folder)
    )  # stops at the first image: a class folder of ImageNet is not listed whole


# --------------------------------------------------------------------------- components
@dataclass(frozen=True)
class ComponentCheck:
    """What importing and trying one component found.

    Attributes:
        kind: ``plugin``, ``method``, ``backbone`` or ``dataset``.
        key: The config key that names it (``plugins[0]``, ``method.name``, ``model.backbone``,
            ``data.dataset``, ``evaluation.oracle_datasets[0].dataset``).
        name: The name the config gave (a registered or entry-point name is recovered from the
            canonical target), or the plugin module's name.
        target: The canonical target (:func:`sweeper.registry.resolve`).
        source: Where it came from (``built-in``, ``registered by <module>``, ``entry point of
            <distribution> <version>``, ``import path``, ``timm``, ``torchvision``; for a plugin
            module: installed, or shipped to the Ray workers).
        file: The file its class, factory or module was imported from.
        detail: A short finding: the backbone's measured width, the method's hyperparameters,
            what a plugin module registered, a data set's channels and root.
    """

    kind: str
    key: str
    name: str
    target: str
    source: str
    file: str
    detail: str

    def line(self) -> str:
        """One line for ``sweeper check``: kind, name -> target, source, file, detail."""
        named = self.name if self.name == self.target else f"{self.name} -> {self.target}"
        return f"{self.kind:<8} {named} ({self.source}), imported from {self.file}: {self.detail}"


def check_components(config: SweeperConfig, *, search_dirs: Sequence[Path] = ()) -> list[ComponentCheck]:
    """Import and try every component of ``config`` on this machine, as a trial will: the data
    roots (:func:`check_data_root`), the ``plugins``, the method (its class, hyperparameter
    model and ``__init__`` signature, and ``method.params`` against that model), the backbone
    (built, and its width measured on a dummy batch) and each data set's loader or factory
    (imported and its arguments matched, no data loaded).

    ``search_dirs`` (the config file's directory) are where a module that is not importable by
    name is looked for, then the current directory. Works on a config read without resolving
    its components (a saved sweep's).

    Raises:
        ConfigError: a component that does not import or does not fit (one line naming its key).
        DataError: a data root that lacks what its data set needs.
    """
    for data in [config.data, *config.evaluation.oracle_datasets]:
        check_data_root(data)  # first: cheap, and needs no plugin
    dirs = _search_dirs(search_dirs)
    checks = [_check_plugin(index, name, dirs) for index, name in enumerate(config.plugins)]
    checks.append(_check_method(config, dirs))
    checks.append(_check_backbone(config, dirs))
    checks += [_check_dataset(key, data, dirs) for key, data in _datasets(config)]
    return checks


def plugin_runtime_env(config: SweeperConfig, *, search_dirs: Sequence[Path] = ()) -> dict[str, Any] | None:
    """``{"py_modules": [...]}``: the directories (packages) and files (single modules) of the
    config's plugin modules and ``module:attr`` targets that are not installed in site-packages
    (:func:`sweeper.registry.modules_to_ship`), for ``ray.init(runtime_env=...)``, so that every
    Ray worker imports the driver's copy; None when nothing needs shipping. Imports what
    :func:`check_components` has not imported yet."""
    dirs = _search_dirs(search_dirs)
    registry.import_plugins(config.plugins, search_dirs=dirs)
    components: list[tuple[registry.Kind, str]] = [("method", config.method.name), ("backbone", config.model.backbone)]
    components += [("dataset", data.dataset) for _, data in _datasets(config)]
    for kind, target in components:
        if ":" in target:
            registry.load(kind, target, search_dirs=dirs)  # modules_to_ship locates imported modules only
    shipped = registry.modules_to_ship([target for _, target in components], config.plugins)
    return {"py_modules": [str(path) for path in shipped]} if shipped else None


def _search_dirs(search_dirs: Sequence[Path]) -> tuple[Path, ...]:
    return tuple(dict.fromkeys([*(Path(d) for d in search_dirs), Path.cwd()]))


def _datasets(config: SweeperConfig) -> list[tuple[str, DataConfig]]:
    """``(key, data section)`` of the training data set and of each OOD data set."""
    oracle = [(f"evaluation.oracle_datasets[{i}].dataset", d) for i, d in enumerate(config.evaluation.oracle_datasets)]
    return [("data.dataset", config.data), *oracle]


def _check_plugin(index: int, name: str, dirs: Sequence[Path]) -> ComponentCheck:
    key = f"plugins[{index}]"
    module = registry.import_module(name, search_dirs=dirs, key=key)
    shipped = registry.modules_to_ship([], [name])
    source = "local module, shipped to the Ray workers" if shipped else "installed"
    registered = [
        f"{component.kind} {component.name}"
        for kind in registry.KINDS
        for component in registry.available(kind)
        if component.source.startswith("registered by ")
        and _within_module(component.source.removeprefix("registered by "), name)
    ]
    detail = f"registers {', '.join(registered)}" if registered else "registers no name"
    return ComponentCheck("plugin", key, name, name, source, _file_of(module), detail)


def _within_module(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def _check_method(config: SweeperConfig, dirs: Sequence[Path]) -> ComponentCheck:
    target = config.method.name
    cls = registry.method_class(target, search_dirs=dirs)
    params = registry.method_params(target, search_dirs=dirs)
    registry.check_signature(cls, params)  # a built-in's too: the class is what trials build
    unknown = sorted(set(config.method.params) - set(params.model_fields))
    if unknown:
        known = sorted(params.model_fields)
        raise ConfigError(f"method.params.{unknown[0]}: {target} has no such hyperparameter; it has {known}")
    try:
        params.model_validate(config.method.params)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ConfigError(f"method.params.{where}: {error['msg']} (got {error.get('input')!r})") from None
    except Exception as exc:  # noqa: BLE001 - a plugin's model may raise its own error
        raise ConfigError(
            f"method.params: {target} refuses {config.method.params} ({registry.first_line(exc)})"
        ) from None
    name, source = _origin("method", target)
    fields = ", ".join(params.model_fields) or "none"
    return ComponentCheck("method", "method.name", name, target, source, _file_of(cls), f"hyperparameters {fields}")


def _check_backbone(config: SweeperConfig, dirs: Sequence[Path]) -> ComponentCheck:
    from sweeper.models import build_backbone

    target, model = config.model.backbone, config.model
    if target.startswith(registry.BACKBONE_FAMILIES):  # what loading a config checks, for a saved one too
        from sweeper.config._sections import check_timm_model, check_torchvision_model

        family, _, model_name = target.partition("/")
        try:
            (check_timm_model if family == "timm" else check_torchvision_model)(model_name)
        except ValueError as exc:
            raise ConfigError(f"model.backbone: {exc}") from None
    elif ":" in target:
        registry.load("backbone", target, search_dirs=dirs)  # imported with the search dirs first
    channels, assumed = _channels(config.data)
    built = build_backbone(
        target,
        in_channels=channels,
        image_size=config.data.image_size,
        cifar_stem=model.cifar_stem,
        args=model.backbone_args,
        pretrained=model.pretrained,
    )
    if target.startswith(registry.BACKBONE_FAMILIES):
        file = _file_of(type(built.module))
    else:
        file = _file_of(registry.load("backbone", target, search_dirs=dirs))
    name, source = _origin("backbone", target)
    assumption = "; channels assumed: data.dataset is a plugin, whose channels show once loaded" if assumed else ""
    size = config.data.image_size
    detail = f"width {built.dim} (measured on 2 dummy {channels}-channel {size} px images{assumption})"
    return ComponentCheck("backbone", "model.backbone", name, target, source, file, detail)


def _channels(data: DataConfig) -> tuple[int, bool]:
    """The channels of ``data``'s images and whether they are assumed (a plugin data set)."""
    if not data.builtin:
        return _PLUGIN_CHANNELS, True
    return (1 if data.dataset in _GRAYSCALE_DATASETS else 3), False


def _check_dataset(key: str, data: DataConfig, dirs: Sequence[Path]) -> ComponentCheck:
    target = data.dataset
    try:
        factory = registry.load("dataset", target, search_dirs=dirs)
    except ConfigError as exc:  # the registry names data.dataset; an OOD data set has its own key
        raise ConfigError(f"{key}: {str(exc).partition(': ')[2]}") from None
    name, source = _origin("dataset", target)
    if data.builtin:
        channels = _channels(data)[0]
        root = f"root {data.root}" if data.root is not None else "no root needed"
        detail = f"{channels}-channel images, {root}"
    else:
        if not callable(factory):
            raise ConfigError(f"{key}: {target!r} is a {type(factory).__name__}, not a callable factory")
        arguments = {"image_size": data.image_size, **data.dataset_args}
        try:
            inspect.signature(factory).bind(**arguments)
        except TypeError as exc:
            raise ConfigError(f"{key}: factory {target} cannot take {sorted(arguments)} ({exc})") from None
        except ValueError:  # no signature to read (a builtin or C callable): the trial will tell
            pass
        detail = f"factory({', '.join(arguments)}), not called (no data loaded here)"
    return ComponentCheck("dataset", key, name, target, source, _file_of(factory), detail)


def _origin(kind: registry.Kind, target: str) -> tuple[str, str]:
    """The name the config gave for ``target`` and where it came from: a registered name or an
    entry point with this target (once the plugins are imported), else the target itself."""
    if registry.is_builtin(kind, target):
        return target, "built-in"
    if kind == "backbone" and target.startswith(registry.BACKBONE_FAMILIES):
        return target, target.partition("/")[0]
    for component in registry.available(kind):
        if component.target == target and not component.builtin and "ignored" not in component.source:
            return component.name, component.source
    return target, "import path"


def _file_of(obj: Any) -> str:
    """The file ``obj`` (a module, class or function) was imported from."""
    try:
        return inspect.getfile(obj)
    except TypeError:  # a built-in module, or an object without a source file
        module = sys.modules.get(getattr(obj, "__module__", "") or "")
        return getattr(module, "__file__", None) or "(no file)"


# --------------------------------------------------------------------------- on the cluster
def check_on_cluster(
    config: SweeperConfig, *, timeout_s: float = CLUSTER_CHECK_TIMEOUT_S
) -> dict[str, list[ComponentCheck]]:
    """:func:`check_components` inside a Ray task on every alive node of the connected cluster
    (in the job's runtime_env, which ships the plugins: see :func:`plugin_runtime_env`), all at
    once; ``{node: what it found}``, a node named by its IP (and its node id where nodes share
    an IP).

    Raises:
        SweepError: one line naming the node, the key and the problem, and for a module that
            does not import there, whether and from where it imports on the driver; or the
            check did not finish within ``timeout_s``.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    labels = _node_labels(nodes)
    check = ray.remote(num_cpus=0, max_retries=0)(_check_on_this_node)
    data = config.to_dict()
    pending = {}
    for node, label in zip(nodes, labels, strict=True):
        on_node = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        pending[check.options(scheduling_strategy=on_node).remote(data)] = label
    _, unfinished = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
    if unfinished:
        for ref in unfinished:
            with contextlib.suppress(Exception):  # best effort: the message matters
                ray.cancel(ref, force=True)
        late = ", ".join(pending[ref] for ref in unfinished)
        raise SweepError(
            f"the component check did not finish within {timeout_s:g} s on node(s) {late} (a worker could not "
            "start, or the runtime_env's setup hangs there): see the Ray logs of those nodes"
        )
    found: dict[str, list[ComponentCheck]] = {}
    for ref, label in pending.items():
        try:
            outcome = ray.get(ref)
        except ray.exceptions.RuntimeEnvSetupError as exc:
            raise SweepError(
                f"node {label}: Ray could not set up the job's runtime_env (the shipped plugin modules) there "
                f"({registry.first_line(exc)})"
            ) from None
        except ray.exceptions.RayError as exc:
            raise SweepError(f"node {label}: the component check failed there ({registry.first_line(exc)})") from None
        if isinstance(outcome, str):
            raise SweepError(_node_failure(outcome, label))
        found[label] = outcome
    return found


def _check_on_this_node(data: dict[str, Any]) -> list[ComponentCheck] | str:
    """The Ray task of :func:`check_on_cluster`: the checks, or the one-line problem."""
    try:
        return check_components(load_config(data=data, resolve=False))
    except SweeperError as exc:
        return str(exc)


def _node_labels(nodes: list[dict[str, Any]]) -> list[str]:
    addresses = [str(node.get("NodeManagerAddress", "?")) for node in nodes]
    return [
        address if addresses.count(address) == 1 else f"{address}/{str(node['NodeID'])[:8]}"
        for address, node in zip(addresses, nodes, strict=True)
    ]


# A module the registry could not import, as its messages name it.
_MISSING = re.compile(r"No module named '([\w.]+)'")
_NAMED = re.compile(r"module '([\w.]+)' (not found|does not import|raised while importing)")
_KEY = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$")


def _node_failure(message: str, label: str) -> str:
    """The one line of a problem a node found, where it was found, and what the driver knows of
    the module it concerns (the same check passed on the driver)."""
    match = _KEY.match(message)
    key, problem = (match.group(1), match.group(2)) if match else ("", message)
    prefix = f"{key}: " if key else ""
    missing = _MISSING.search(problem)
    named = _NAMED.search(problem)
    if named is not None and named.group(2) == "not found":
        # The registry's fix (install, PYTHONPATH, beside the config) is the driver's; say the node's.
        module = named.group(1)
        return f"{prefix}module {module!r} not found on node {label} ({_on_the_driver(module)})"
    concerned = missing or named  # a dependency the node lacks, else the module that failed there
    if concerned is not None:
        return f"{prefix}{problem} on node {label} ({_on_the_driver(concerned.group(1))})"
    return f"{prefix}on node {label}: {problem} (the same check passes on the driver)"


def _on_the_driver(module_name: str) -> str:
    """Whether ``module_name`` imports on the driver, from where, and so why a node lacks it."""
    module = sys.modules.get(module_name) or sys.modules.get(module_name.partition(".")[0])
    if module is None:
        try:
            module = importlib.import_module(module_name)
        except Exception:  # noqa: BLE001 - whatever stops it here, it does not import here either
            return "it does not import on the driver either"
    location = registry.module_location(module)
    if location is None:
        return "it imports on the driver, as a namespace package: Ray cannot ship it; install it on every node"
    if any(location.is_relative_to(root) for root in registry.installed_roots()):
        return (
            f"it imports on the driver from {location}, an installed package: install it on every node "
            "(the cluster's image or environment)"
        )
    return (
        f"it imports on the driver from {location}: it was not shipped; ship it in the Ray job's runtime_env "
        "py_modules (sweeper run, check and submit do, from a driver that has not started Ray yet), or install "
        "it on every node"
    )


def check_everywhere(
    config: SweeperConfig, *, address: str | None = None, search_dirs: Sequence[Path] = ()
) -> tuple[list[ComponentCheck], dict[str, list[ComponentCheck]]]:
    """``sweeper check``: :func:`check_components` here and, given a Ray ``address``, on every
    node of that cluster, the plugins shipped as a sweep ships them."""
    here = check_components(config, search_dirs=search_dirs)
    if address is None:
        return here, {}
    from sweeper.sweep._cluster import connect

    started = connect(address, runtime_env=plugin_runtime_env(config, search_dirs=search_dirs))
    try:
        return here, check_on_cluster(config)
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------- listing
def component_listing(plugins: Sequence[str] = (), *, search_dirs: Sequence[Path] = ()) -> list[str]:
    """``sweeper plugins``: one line per component of each kind — the built-ins (with what they
    name), the backbone families, the names ``plugins`` register (imported first), and the
    installed entry points (one that tries to shadow a built-in marked ignored) — with its
    target and source, in aligned columns."""
    registry.import_plugins(plugins, search_dirs=_search_dirs(search_dirs))
    rows = [(component.kind, component.name, _shown_target(component), component.source) for component in _every()]
    for family in registry.BACKBONE_FAMILIES:
        rows.append(("backbone", f"{family}<name>", f"any {family[:-1]} model by name", _family_source(family)))
    rows.sort(key=lambda row: registry.KINDS.index(row[0]))  # stable: each kind's own order kept
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    return ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[3]]) for row in rows]


def _every() -> Iterator[registry.Component]:
    for kind in registry.KINDS:
        yield from registry.available(kind)


def _shown_target(component: registry.Component) -> str:
    """A built-in's implementation (its target is its own name); any other's target."""
    if not component.builtin:
        return component.target
    table: dict[str, Callable[[str], str]] = {
        "method": lambda name: registry.BUILTIN_METHODS[name].target,
        "backbone": lambda name: registry.BUILTIN_BACKBONES[name],
        "dataset": lambda name: registry.BUILTIN_DATASETS[name],
    }
    return table[component.kind](component.name)


def _family_source(family: str) -> str:
    package = family.rstrip("/")
    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{package}, not installed (pip install {package})"
