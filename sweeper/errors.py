"""The errors sweeper raises for problems a user can fix (layer L0).

Every expected problem derives from :class:`SweeperError`; its message is one line that names
what is wrong and how to fix it. The command line catches :class:`SweeperError` once and prints
``sweeper: error: <message>`` with exit code 2; anything else is a bug and keeps its traceback.
The subclasses keep the built-in base they had (``ValueError``, ``RuntimeError``) so code that
caught those still works.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "StorageError",
    "SubmitError",
    "SweepError",
    "SweeperError",
    "TrackingError",
]


class SweeperError(Exception):
    """A problem the user can fix; the message says what and how, in one line."""


class ConfigError(SweeperError, ValueError):
    """A configuration problem, phrased as one line that names the key and the fix."""


class DataError(SweeperError, FileNotFoundError):
    """A data set cannot be read from ``data.root``; the message says what is missing."""


class StorageError(SweeperError, RuntimeError):
    """The storage cannot be reached or used; the message says what to fix."""


class TrackingError(SweeperError, RuntimeError):
    """The tracking server or store cannot be used; the message says how to fix it."""


class SweepError(SweeperError, RuntimeError):
    """A sweep cannot start or continue; the message says why and what to do."""


class SubmitError(SweeperError, RuntimeError):
    """A sweep cannot be sent to a cluster (Ray Job, Slurm); the message says why."""
