"""One registry of the components a sweep is built from: SSL methods, backbones and data sets.

A config names each component in one of three ways, the same for all three kinds, and
:func:`resolve` turns the name into a canonical **target** — what ``sweeper.yaml`` saves and what
every trial process imports (never a pickled object):

* a **registered name**: a built-in (``vicreg``, ``resnet18``, ``digits``; its own target, and
  never shadowed), or a name given to :func:`register_method` / :func:`register_backbone` /
  :func:`register_dataset` by a module the config lists under ``plugins:``, whose target is
  the registered object's ``module:qualname``;
* an **entry point** of an installed package, in the groups ``sweeper.methods``,
  ``sweeper.backbones`` and ``sweeper.datasets``; its target is the entry point's ``module:attr``;
* an **import path** ``package.module:attr`` (``attr`` may be dotted).

Backbones also come by family: ``timm/<name>`` and ``torchvision/<name>`` are their own targets.

A module that is not importable by name is looked for beside the config file and in the
current directory (:func:`import_module`), as ``python -m`` would find it; where each plugin
module was imported from decides whether it must be shipped to the Ray workers
(:func:`modules_to_ship`). Layer 0: importlib only; torch is imported by the plugins
themselves, never here at module load.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import site
import sys
import sysconfig
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, TypeVar

from sweeper.errors import ConfigError
from sweeper.hyperparams import (
    BarlowTwinsParams,
    BYOLParams,
    CARPParams,
    DINOParams,
    MethodParams,
    SimCLRParams,
    SwAVParams,
    VICRegCtrParams,
    VICRegExpParams,
    VICRegParams,
)

__all__ = [
    "BACKBONE_FAMILIES",
    "BUILTIN_BACKBONES",
    "BUILTIN_DATASETS",
    "BUILTIN_METHODS",
    "ENTRY_POINT_GROUPS",
    "Component",
    "Kind",
    "available",
    "builtin_names",
    "call_with_kwargs",
    "check_signature",
    "import_module",
    "import_plugins",
    "is_builtin",
    "load",
    "method_class",
    "method_has_prototypes",
    "method_params",
    "first_line",
    "installed_roots",
    "module_location",
    "modules_to_ship",
    "register_backbone",
    "register_dataset",
    "register_method",
    "resolve",
]

Kind = Literal["method", "backbone", "dataset"]
KINDS: tuple[Kind, ...] = ("method", "backbone", "dataset")
ENTRY_POINT_GROUPS: dict[Kind, str] = {
    "method": "sweeper.methods",
    "backbone": "sweeper.backbones",
    "dataset": "sweeper.datasets",
}
BACKBONE_FAMILIES = ("timm/", "torchvision/")
# The config key that names each kind, for messages.
_KEYS: dict[Kind, str] = {"method": "method.name", "backbone": "model.backbone", "dataset": "data.dataset"}


@dataclass(frozen=True)
class _BuiltinMethod:
    target: str  # the class, imported only to build it
    params: type[MethodParams]  # its hyperparameters, importable without torch
    prototypes: bool  # a clustering head: trials also report rankme/prototypes


# The built-ins, each declared once here: the config's name checks, the builders and
# `sweeper plugins` read these tables. Built-in names are their own targets.
BUILTIN_METHODS: dict[str, _BuiltinMethod] = {
    "simclr": _BuiltinMethod("sweeper.methods.simclr:SimCLR", SimCLRParams, False),
    "vicreg": _BuiltinMethod("sweeper.methods.vicreg:VICReg", VICRegParams, False),
    "vicreg_exp": _BuiltinMethod("sweeper.methods.vicreg_exp:VICRegExp", VICRegExpParams, False),
    "vicreg_ctr": _BuiltinMethod("sweeper.methods.vicreg_ctr:VICRegCtr", VICRegCtrParams, False),
    "barlow_twins": _BuiltinMethod("sweeper.methods.barlow_twins:BarlowTwins", BarlowTwinsParams, False),
    "byol": _BuiltinMethod("sweeper.methods.byol:BYOL", BYOLParams, False),
    "dino": _BuiltinMethod("sweeper.methods.dino:DINO", DINOParams, True),
    "swav": _BuiltinMethod("sweeper.methods.swav:SwAV", SwAVParams, True),
    "carp": _BuiltinMethod("sweeper.methods.carp:CARP", CARPParams, True),
}
BUILTIN_BACKBONES: dict[str, str] = {
    "small_cnn": "sweeper.models.backbones:small_cnn",
    "resnet18": "sweeper.models.backbones:resnet18",
    "resnet50": "sweeper.models.backbones:resnet50",
    "vit_s16": "sweeper.models.backbones:vit_s16",
}
BUILTIN_DATASETS: dict[str, str] = {
    "digits": "sweeper.data.datasets:load_digits",
    "fashion_mnist": "sweeper.data.datasets:load_idx",
    "mnist": "sweeper.data.datasets:load_idx",
    "cifar10": "sweeper.data.datasets:load_torchvision",
    "cifar100": "sweeper.data.datasets:load_torchvision",
    "stl10": "sweeper.data.datasets:load_torchvision",
    "imagefolder": "sweeper.data.datasets:load_imagefolder",
}
_BUILTINS: dict[Kind, Any] = {"method": BUILTIN_METHODS, "backbone": BUILTIN_BACKBONES, "dataset": BUILTIN_DATASETS}

# Names registered in this process by plugin modules: {kind: {name: (target, registering module)}}.
_REGISTERED: dict[Kind, dict[str, tuple[str, str]]] = {kind: {} for kind in KINDS}

_T = TypeVar("_T")


@dataclass(frozen=True)
class Component:
    """A resolved component.

    Attributes:
        kind: ``method``, ``backbone`` or ``dataset``.
        name: The name as the config gave it.
        target: The canonical form saved in ``sweeper.yaml`` and imported by the trials: a
            built-in name, ``timm/<name>`` / ``torchvision/<name>``, or ``module:attr``.
        source: Where it came from, for ``sweeper check`` and ``sweeper plugins``: ``built-in``,
            ``registered by <module>``, ``entry point of <distribution> <version>``,
            ``import path``, ``timm`` or ``torchvision``.
    """

    kind: Kind
    name: str
    target: str
    source: str

    @property
    def builtin(self) -> bool:
        return self.source == "built-in"


# --------------------------------------------------------------------------- registering
def register_method(name: str, cls: _T | None = None) -> Any:
    """Register an :class:`sweeper.SSLMethod` subclass under ``name`` (also as a decorator:
    ``@register_method("simsiam")``). Call it at the top level of a module the config lists
    under ``plugins:``; the trials import that module, so the name means the same there."""
    return _register("method", name, cls)


def register_backbone(name: str, factory: _T | None = None) -> Any:
    """Register a backbone factory ``(*, in_channels, image_size, **backbone_args) -> nn.Module``
    (a module giving (B, D) representations) under ``name``; also a decorator."""
    return _register("backbone", name, factory)


def register_dataset(name: str, factory: _T | None = None) -> Any:
    """Register a data-set factory ``(*, image_size, **dataset_args)`` (see
    :func:`sweeper.data.load_dataset` for what it returns) under ``name``; also a decorator."""
    return _register("dataset", name, factory)


def _register(kind: Kind, name: str, obj: Any) -> Any:
    if obj is None:
        return lambda target: _register(kind, name, target)
    if not isinstance(name, str) or not name or ":" in name or name.startswith(BACKBONE_FAMILIES):
        raise ConfigError(f"register_{kind}({name!r}): a name is a plain word (no ':', no family prefix)")
    if name in _BUILTINS[kind]:
        raise ConfigError(f"register_{kind}({name!r}): {name!r} is a built-in {kind} and cannot be shadowed; rename it")
    target = _target_of(obj, what=f"register_{kind}({name!r})")
    known = _REGISTERED[kind].get(name)
    if known is not None and known[0] != target:
        raise ConfigError(
            f"register_{kind}({name!r}): {name!r} is already registered to {known[0]} (by {known[1]}); "
            f"registering {target} too would make the name ambiguous: rename one"
        )
    _REGISTERED[kind][name] = (target, obj.__module__)
    return obj


def _target_of(obj: Any, *, what: str) -> str:
    """``module:qualname`` of ``obj``, which importing must give back (workers import it)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or "<locals>" in qualname or module == "__main__":
        where = "in __main__ (a script)" if module == "__main__" else "inside a function"
        raise ConfigError(
            f"{what}: {obj!r} is defined {where}, so the trial processes cannot import it: "
            "define it at the top level of a module and list that module under plugins:"
        )
    return f"{module}:{qualname}"


# --------------------------------------------------------------------------- importing
def import_plugins(modules: Sequence[str], *, search_dirs: Sequence[Path] = ()) -> None:
    """Import each of ``modules`` (a config's ``plugins:``), so that what they register exists.

    Raises:
        ConfigError: ``plugins[i]: ...`` naming the module and why it does not import.
    """
    for index, name in enumerate(modules):
        import_module(name, search_dirs=search_dirs, key=f"plugins[{index}]")


def import_module(name: str, *, search_dirs: Sequence[Path] = (), key: str = "plugins") -> ModuleType:
    """``importlib.import_module(name)``; a top-level module that is not importable by name is
    looked for in ``search_dirs`` (the config's directory, the current directory) without
    changing ``sys.path``.

    Raises:
        ConfigError: the module cannot be found, or raised while importing (the error named).
    """
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise ConfigError(f"{key}: {name!r} is not a module name (write package.module)")
    top = name.partition(".")[0]
    try:
        if top not in sys.modules and importlib.util.find_spec(top) is None:
            _import_beside(top, search_dirs)  # inside the try: a module found beside may raise too
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):
            places = ", ".join(str(d) for d in search_dirs) or "the current directory"
            raise ConfigError(
                f"{key}: module {name!r} not found: install its package (pip install -e DIR), put it on "
                f"PYTHONPATH, or place it in {places}"
            ) from None
        raise ConfigError(f"{key}: module {name!r} does not import: {first_line(exc)}") from None
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin may raise anything while importing
        raise ConfigError(f"{key}: module {name!r} raised while importing: {first_line(exc)}") from None


def _import_beside(top: str, search_dirs: Sequence[Path]) -> None:
    """Import the top-level module ``top`` from the first of ``search_dirs`` that holds it
    (``top.py`` or ``top/__init__.py``), registered in ``sys.modules`` under its name."""
    from importlib.machinery import PathFinder

    for directory in search_dirs:
        spec = PathFinder.find_spec(top, [str(directory)])
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[top] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[top]
            raise
        return


def load(kind: Kind, target: str, *, search_dirs: Sequence[Path] = ()) -> Any:
    """The object a target names: a built-in's function or class, or ``module:attr``.

    Raises:
        ConfigError: the module does not import, or has no such attribute (closest names given).
    """
    path = _builtin_target(kind, target)
    if path is None:  # a registered name or an entry point is loaded through its target
        path = target if ":" in target else resolve(kind, target, search_dirs=search_dirs).target
    module_name, sep, attribute = path.partition(":")
    if not sep or not attribute:
        raise ConfigError(f"{_KEYS[kind]}: {target!r} is neither a known {kind} nor an import path module:attr")
    module = import_module(module_name, search_dirs=search_dirs, key=_KEYS[kind])
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(f"{_KEYS[kind]}: {module_name!r} has no attribute {attribute!r}{_closest(part, names)}")
        obj = getattr(obj, part)
    return obj


def _builtin_target(kind: Kind, name: str) -> str | None:
    entry = _BUILTINS[kind].get(name)
    return None if entry is None else entry.target if kind == "method" else entry


# --------------------------------------------------------------------------- resolving
def builtin_names(kind: Kind) -> list[str]:
    """The built-in names of ``kind``, in their declared order."""
    return list(_BUILTINS[kind])


def is_builtin(kind: Kind, name: str) -> bool:
    return name in _BUILTINS[kind]


def resolve(kind: Kind, name: str, *, search_dirs: Sequence[Path] = ()) -> Component:
    """The component ``name`` of ``kind`` refers to (see the module docstring for the order:
    built-in, family, import path, registered name, entry point).

    Raises:
        ConfigError: one line naming the key: an unknown name (closest names given), two entry
            points of one name (both distributions named), an import path that does not import.
    """
    key = _KEYS[kind]
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{key}: give a {kind} name")
    if name in _BUILTINS[kind]:
        return Component(kind, name, name, "built-in")
    if kind == "backbone" and name.startswith(BACKBONE_FAMILIES):
        family = name.partition("/")[0]
        return Component(kind, name, name, family)
    if ":" in name:
        obj = load(kind, name, search_dirs=search_dirs)
        _check_kind(kind, name, obj)
        return Component(kind, name, name, "import path")
    registered = _REGISTERED[kind].get(name)
    if registered is not None:
        return Component(kind, name, registered[0], f"registered by {registered[1]}")
    points = _entry_points(kind).get(name, [])
    if len(points) > 1:
        owners = " and ".join(_distribution(point) for point in points)
        raise ConfigError(
            f"{key}: two installed packages declare the {ENTRY_POINT_GROUPS[kind]} entry point {name!r} ({owners}): "
            "uninstall one, or name the component by its import path module:attr"
        )
    if points:
        return Component(kind, name, points[0].value.replace(" ", ""), f"entry point of {_distribution(points[0])}")
    known = list(dict.fromkeys([*_BUILTINS[kind], *_REGISTERED[kind], *_entry_points(kind)]))
    families = " (or timm/<name>, torchvision/<name>)" if kind == "backbone" else ""
    raise ConfigError(
        f"{key}: unknown {kind} {name!r}{_closest(name, known)}; known: {sorted(known)}{families}, "
        f"an entry point of group {ENTRY_POINT_GROUPS[kind]}, a name registered by a module under plugins:, "
        "or an import path package.module:attr"
    )


def _check_kind(kind: Kind, name: str, obj: Any) -> None:
    """An import path must name an object of the right kind: a method class, or a callable."""
    if kind == "method":
        # The one reference upward (to layer 1), at call time only: it runs once a plugin method
        # is imported, which imports torch anyway; this module itself stays free of torch.
        base = importlib.import_module("sweeper.methods.base").SSLMethod
        if not (inspect.isclass(obj) and issubclass(obj, base)):
            raise ConfigError(
                f"method.name: {name!r} is {_describe(obj)}, not a subclass of sweeper.SSLMethod: "
                "point it at your method class"
            )
    elif not callable(obj):
        raise ConfigError(f"{_KEYS[kind]}: {name!r} is {_describe(obj)}, not a callable factory")


def method_class(target: str, *, search_dirs: Sequence[Path] = ()) -> Any:
    """The :class:`sweeper.SSLMethod` subclass of a method target (imports it)."""
    cls = load("method", target, search_dirs=search_dirs)
    _check_kind("method", target, cls)
    return cls


def method_params(target: str, *, search_dirs: Sequence[Path] = ()) -> type[MethodParams]:
    """The pydantic model of a method's hyperparameters: a built-in's from this table (no
    torch import), a plugin's from its class's ``hyperparameters``.

    Raises:
        ConfigError: the class declares no pydantic model, or its ``__init__`` does not take
            exactly the model's fields as keyword arguments (besides ``backbone``, ``projector``).
    """
    builtin = BUILTIN_METHODS.get(target)
    if builtin is not None:
        return builtin.params
    cls = method_class(target, search_dirs=search_dirs)
    params = getattr(cls, "hyperparameters", None)
    from pydantic import BaseModel

    if not (inspect.isclass(params) and issubclass(params, BaseModel)):
        raise ConfigError(
            f"method.name: {target} declares no hyperparameters: set the class attribute "
            "hyperparameters = <a pydantic model (sweeper.MethodParams) with the papers' defaults>"
        )
    check_signature(cls, params)
    return params


def check_signature(cls: Any, params: type[Any]) -> None:
    """``cls.__init__`` takes ``backbone``, ``projector`` and exactly ``params``' fields."""
    arguments = set(inspect.signature(cls.__init__).parameters) - {"self", "backbone", "projector"}
    fields = set(params.model_fields)
    if arguments != fields:
        missing, extra = sorted(fields - arguments), sorted(arguments - fields)
        what = "; ".join(
            part
            for part in (
                f"its hyperparameters {missing} are not arguments of __init__" if missing else "",
                f"__init__ takes {extra}, which are not hyperparameters" if extra else "",
            )
            if part
        )
        raise ConfigError(
            f"method.name: {cls.__module__}:{cls.__qualname__}: {what}: __init__(self, backbone, *, projector, "
            f"<one keyword per field of {params.__name__}>)"
        )


def method_has_prototypes(target: str) -> bool:
    """Whether trials of this method also report ``rankme/prototypes`` (it overrides
    :meth:`sweeper.SSLMethod.prototypes`)."""
    builtin = BUILTIN_METHODS.get(target)
    if builtin is not None:
        return builtin.prototypes
    base = importlib.import_module("sweeper.methods.base").SSLMethod
    return method_class(target).prototypes is not base.prototypes


# --------------------------------------------------------------------------- listing
def available(kind: Kind) -> list[Component]:
    """Every component of ``kind`` known in this process: the built-ins, the names registered
    by imported plugin modules, and the installed entry points (several of one name: each)."""
    found = [Component(kind, name, name, "built-in") for name in _BUILTINS[kind]]
    found += [
        Component(kind, name, target, f"registered by {module}") for name, (target, module) in _REGISTERED[kind].items()
    ]
    for name, points in _entry_points(kind).items():
        for point in points:
            source = f"entry point of {_distribution(point)}"
            if name in _BUILTINS[kind]:
                source += " (ignored: a built-in name cannot be shadowed)"
            found.append(Component(kind, name, point.value.replace(" ", ""), source))
    return found


def _entry_points(kind: Kind) -> dict[str, list[importlib.metadata.EntryPoint]]:
    by_name: dict[str, list[importlib.metadata.EntryPoint]] = {}
    seen: set[tuple[str, str]] = set()
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUPS[kind]):
        # One distribution found twice on sys.path (an editable install and its build) is one.
        identity = (point.name, point.value)
        if identity in seen:
            continue
        seen.add(identity)
        by_name.setdefault(point.name, []).append(point)  # a built-in's name: listed, never resolved
    return by_name


def _distribution(point: importlib.metadata.EntryPoint) -> str:
    dist = point.dist
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"


# --------------------------------------------------------------------------- shipping
def modules_to_ship(targets: Iterable[str], plugins: Sequence[str] = ()) -> list[Path]:
    """The directories (a package) or files (a single-module plugin) the Ray workers need
    shipped (``runtime_env["py_modules"]``): the top-level modules of ``plugins`` and of the
    ``module:attr`` targets that are neither sweeper's own nor installed in site-packages (a
    checkout, an editable install, a file beside the config). Each must be imported already."""
    tops: list[str] = []
    for name in [*plugins, *(target.partition(":")[0] for target in targets if ":" in target)]:
        top = name.partition(".")[0]
        if top not in tops and top != "sweeper":
            tops.append(top)
    shipped: list[Path] = []
    installed = installed_roots()
    for top in tops:
        module = sys.modules.get(top)
        location = module_location(module) if module is not None else None
        if location is None or any(_is_within(location, root) for root in installed):
            continue
        if location not in shipped:
            shipped.append(location)
    return shipped


def module_location(module: ModuleType) -> Path | None:
    """Where ``module`` was imported from: a package's directory or a single module's file; None
    for a namespace package or a built-in module."""
    paths = list(getattr(module, "__path__", []) or [])
    if paths:
        return Path(paths[0]).resolve() if len(paths) == 1 else None
    file = getattr(module, "__file__", None)
    return Path(file).resolve() if file else None


def installed_roots() -> list[Path]:
    """The directories of installed code (site-packages, the standard library, the user site,
    Ray's runtime_env directory): code under them is not shipped to the workers."""
    roots = {sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib", "platstdlib")}
    roots |= set(getattr(site, "getsitepackages", list)())
    user = getattr(site, "getusersitepackages", lambda: None)()
    if user:
        roots.add(user)
    # A Ray worker's runtime_env directory: what a job already shipped is not shipped again.
    ray_temp = os.environ.get("RAY_TMPDIR")
    if ray_temp:
        roots.add(ray_temp)
    return [Path(root).resolve() for root in roots if root]


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


# --------------------------------------------------------------------------- messages
def _closest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, [str(o) for o in options], n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _describe(obj: Any) -> str:
    if inspect.isclass(obj):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    return f"a {type(obj).__name__}"


def first_line(exc: BaseException) -> str:
    """``Type: the first line of the message`` (at most 200 characters)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def call_with_kwargs(factory: Callable[..., _T], what: str, **kwargs: Any) -> _T:
    """``factory(**kwargs)``, a signature mismatch reported as one :class:`ConfigError` line."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return factory(**kwargs)
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        accepted = [name for name in signature.parameters if name not in {"self", "args", "kwargs"}]
        raise ConfigError(f"{what}: {exc}; it takes {accepted}") from None
    return factory(**kwargs)
