"""Reading YAML the way every config is read (layer L0): configs, ``--set`` values, saved sweeps.

Two differences from :func:`yaml.safe_load`:

- Floats follow YAML 1.2: PyYAML implements YAML 1.1, whose float pattern needs a dot, so
  ``1e-4`` is the *string* ``'1e-4'`` there; here it is the float ``0.0001`` (as in JSON, Python
  and YAML 1.2's core schema).
- Aliases are bounded: a document whose aliases would expand to more than
  :data:`MAX_NODES` nodes (a "billion laughs" alias bomb, a few hundred bytes that expand
  exponentially once a validator copies them), or that refers to itself, is refused before
  anything is constructed.

Every problem is one :class:`~sweeper.errors.ConfigError` line naming the source and the fix.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from sweeper.errors import ConfigError

__all__ = ["MAX_NODES", "read_yaml"]

MAX_NODES = 100_000
_FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.2 core-schema floats (exponent without a dot allowed), plus 1.1's sexagesimal floats.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)


class _TooLarge(Exception):
    """The document's aliases expand too far (or into themselves)."""


class _ConfigLoader(yaml.SafeLoader):
    """:class:`yaml.SafeLoader` with YAML 1.2 floats and a bound on alias expansion."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        _check_expansion(node)
        return node


# Copy the resolver lists: SafeLoader's own must stay untouched (they are shared by reference).
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))


def read_yaml(text: str, *, source: str) -> Any:
    """Parse one YAML document ``text`` (from ``source``, which the error message names).

    Raises:
        ConfigError: not valid YAML (with the line and the parser's reason, in one line), nested
            too deeply, or aliases that expand past :data:`MAX_NODES` nodes.
    """
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except _TooLarge as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a config: flatten it") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML{_where(exc)}: fix the syntax") from None


def _where(exc: yaml.YAMLError) -> str:
    """`` at line L, column C (problem)`` from a PyYAML error, on one line."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None)
    return f"{where} ({' '.join(str(problem).split())})" if problem else where


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Count the nodes ``root`` expands to, each shared (aliased) node once per use, in time
    linear in the *composed* graph: sizes are memoised per node, so the count never expands."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the ancestors of the node being visited
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_NODES:
                raise _TooLarge(
                    f"its aliases expand to more than {MAX_NODES} values (line {node.start_mark.line + 1}): "
                    "write the repeated parts out, or alias only small sections"
                )
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise _TooLarge(f"an alias at line {node.start_mark.line + 1} refers to itself: remove the cycle")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))
