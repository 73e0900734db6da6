"""Where a sweep lives: a local (or mounted, shared) directory, or a directory in any pyarrow
filesystem given as a URI (``s3://bucket/sweeps``, ``gs://...``, ``hdfs://...``, ``abfs://...``).

Ray Tune writes trials and checkpoints there through the same pyarrow filesystem; sweeper keeps
its own files beside them (``sweeper.yaml``, ``trials.csv``, the report). A URI may carry
pyarrow's options as a query, e.g. ``s3://sweeps/runs?endpoint_override=minio:9000&scheme=http``
for an S3-compatible server; credentials come from the environment (``AWS_ACCESS_KEY_ID``, an
instance role, ``GOOGLE_APPLICATION_CREDENTIALS``, ...) and are refused in the URI, which is
saved and logged. :func:`uri_credentials` finds credentials in any URI of a config (userinfo in
any spelling, secret query parameters) and :func:`redact_credentials` hides them in any text.

The report's files are written to a local directory first (plots are made by matplotlib, which
needs a file) and, for a URI, uploaded next to the trials; the local copy stays in
``$SWEEPER_CACHE`` (default ``~/.cache/sweeper``) for viewing.

Every call to a remote filesystem runs with a deadline (:func:`storage_timeout_s`, default
30 s, ``$SWEEPER_STORAGE_TIMEOUT_S``): an unreachable bucket is one error line, never a hang.
:func:`check_database_url` checks an SQL store (sqlite file, database server) or a journal file
the way a sweep will use it, before anything is written.
"""

from __future__ import annotations

import functools
import os
import queue
import re
import socket
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import pyarrow.fs as pafs

from sweeper.errors import StorageError

__all__ = [
    "StorageError",
    "SweepLocation",
    "check_database_url",
    "check_storage_uri",
    "credential_source",
    "credentials_problem",
    "is_uri",
    "redact_credentials",
    "storage_timeout_s",
    "uri_credentials",
    "write_atomic",
]

_T = TypeVar("_T")
STORAGE_TIMEOUT_ENV = "SWEEPER_STORAGE_TIMEOUT_S"
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Schemes pyarrow's FileSystem.from_uri understands.
_SCHEMES = {"file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"}
_CREDENTIALS = {"access_key", "secret_key", "session_token", "sas_token", "account_key", "client_secret"}
# Query parameters that carry a secret in any URI (pyarrow's options above, libpq's password, tokens).
_SECRET_QUERY = _CREDENTIALS | {"password", "passwd", "pwd", "token", "access_token", "api_key", "apikey", "secret"}
# Schemes whose authority is a local path, never a login (``sqlite:////home/me@lab/mlflow.db``).
_PATH_SCHEMES = {"file", "sqlite"}
# SQL databases: a bare user name is fine there (the password comes from the environment).
_DATABASE_SCHEMES = {"postgresql", "postgres", "mysql", "mariadb", "mssql", "oracle", "cockroachdb"}
_USER_NAME = re.compile(r"[^:/?#\s]+")
# The database servers a sweep may write to (tracking.uri, search.storage) and their default ports.
_DATABASE_PORTS = {
    "postgresql": 5432,
    "postgres": 5432,
    "cockroachdb": 26257,
    "mysql": 3306,
    "mariadb": 3306,
    "mssql": 1433,
    "oracle": 1521,
}
# In free text: ``scheme://`` up to the last ``@`` of the same token; a secret query value.
_USERINFO_IN_TEXT = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://)\S*@")
_SECRET_QUERY_IN_TEXT = re.compile(
    r"(?P<head>[?&](?:" + "|".join(sorted(_SECRET_QUERY)) + r")=)[^&#\s'\"]*", flags=re.IGNORECASE
)


def is_uri(value: str | os.PathLike[str]) -> bool:
    return bool(_URI.match(str(value)))


def _scheme(uri: str) -> str:
    """The scheme's base, lower case: ``PostgreSQL+psycopg://`` -> ``postgresql``."""
    return uri.split("://", 1)[0].split("+", 1)[0].lower()


def uri_credentials(uri: str) -> str | None:
    """What in ``uri`` is a credential, described without its value; None when it has none.

    Parsed by hand rather than trusted to :func:`urllib.parse.urlsplit`, which ends the
    authority at the first ``/``, ``?`` or ``#``: ``http://alice:S3cr/etPW@host`` would hide its
    password in the path. So any ``@`` after ``scheme://`` counts as the end of a userinfo,
    except in path-like schemes (``file``, ``sqlite``) where only the authority is looked at. A
    bare user name is allowed for SQL databases (``postgresql://sweeper@host/db``).
    """
    if not is_uri(uri):
        return None
    scheme = _scheme(uri)
    rest = uri.split("://", 1)[1]
    if scheme in _PATH_SCHEMES:
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        userinfo = authority.rpartition("@")[0] if "@" in authority else None
    else:
        userinfo = rest.rpartition("@")[0] if "@" in rest else None
    if userinfo and not (scheme in _DATABASE_SCHEMES and _USER_NAME.fullmatch(userinfo)):
        return "a user name and password" if ":" in userinfo else "a user name or token"
    query = rest.partition("#")[0].partition("?")[2]
    secret = sorted(_SECRET_QUERY & {key.lower() for key, _ in parse_qsl(query)})
    return ", ".join(secret) if secret else None


def credential_source(uri: str) -> str:
    """Where the credentials of ``uri``'s service come from instead of the URI."""
    scheme = _scheme(uri)
    if scheme in {"http", "https"}:
        return "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
    if scheme == "s3":
        return "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or an instance role)"
    if scheme in {"gs", "gcs"}:
        return "GOOGLE_APPLICATION_CREDENTIALS"
    if scheme in {"postgresql", "postgres", "cockroachdb"}:
        return "PGPASSWORD or ~/.pgpass (keep only the user name in the URI)"
    if scheme in {"mysql", "mariadb"}:
        return "MYSQL_PWD or ~/.my.cnf (keep only the user name in the URI)"
    return "the environment of the service's client"


def credentials_problem(uri: str) -> str | None:
    """The one-line refusal of a URI that carries credentials (naming what and where they belong,
    never their value), or None when it carries none."""
    credentials = uri_credentials(uri)
    if credentials is None:
        return None
    return (
        f"{redact_credentials(uri)!r} carries {credentials}: credentials do not belong in the URI (it is saved "
        f"and logged); remove them and set them in the environment instead: {credential_source(uri)}"
    )


def redact_credentials(text: str) -> str:
    """``text`` with the userinfo of every URI in it (any case, any characters up to the last
    ``@`` of the token) replaced by ``***``, and secret query values too."""
    text = _USERINFO_IN_TEXT.sub(r"\g<head>***@", text)
    return _SECRET_QUERY_IN_TEXT.sub(r"\g<head>***", text)


def check_storage_uri(value: str) -> str:
    """A URI ``storage_path`` pyarrow can open and that carries no credentials (for config
    validation; does not contact the storage). Messages never repeat a credential."""
    problem = credentials_problem(value)
    if problem is not None:
        raise ValueError(problem)
    shown = redact_credentials(value)
    parts = urlsplit(value)
    if parts.scheme.lower() not in _SCHEMES:
        raise ValueError(
            f"{shown!r}: unsupported storage scheme {parts.scheme!r}; use a path, or one of "
            + ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        )
    if not parts.netloc and parts.scheme.lower() not in {"file", "hdfs", "viewfs"}:
        raise ValueError(f"{shown!r}: the URI names no bucket/container, e.g. s3://my-bucket/sweeps")
    return value


def check_database_url(url: str, *, key: str, timeout: float = 5.0) -> None:
    """Refuse, with one :class:`StorageError` line naming ``key`` and the fix, a store a sweep
    could not write to, without writing anything: an SQLite URL held in memory (every record
    lost with the process), naming a directory, a file that is not an SQLite database (opened
    read-only to see), or an unwritable place; a database server that does not accept a TCP
    connection within ``timeout`` seconds; a ``journal:PATH`` (Optuna) in an unwritable place."""
    shown = redact_credentials(url)
    if url.startswith("journal:"):
        _check_writable_place(Path(url.removeprefix("journal:")).expanduser(), key=key, shown=shown)
        return
    scheme = _scheme(url) if is_uri(url) else ""
    if scheme == "sqlite":
        _check_sqlite(url, key=key, shown=shown, timeout=timeout)
    elif scheme in _DATABASE_PORTS:
        _check_server(url, key=key, shown=shown, timeout=timeout, default_port=_DATABASE_PORTS[scheme])
    else:
        raise StorageError(
            f"{key} {shown!r}: unsupported database URL; use sqlite:///FILE.db or a server "
            f"({', '.join(sorted(f'{name}://' for name in _DATABASE_PORTS))})"
        )


def _sqlite_file(url: str) -> Path | None:
    """The database file of an SQLite URL; None when the database lives in memory."""
    rest = url.split("://", 1)[1]
    path, _, query = rest.partition("?")
    path = unquote(path.removeprefix("/"))
    if not path or path == ":memory:" or "mode=memory" in query:
        return None
    return Path(path).expanduser()


def _check_sqlite(url: str, *, key: str, shown: str, timeout: float) -> None:
    path = _sqlite_file(url)
    if path is None:
        raise StorageError(
            f"{key} {shown!r} is an in-memory database: every record would be lost when the sweep ends; "
            f"use a file, e.g. sqlite:///mlflow.db"
        )
    if path.is_dir():
        raise StorageError(
            f"{key} {shown!r}: {str(path)!r} is a directory: name a file, e.g. sqlite:///{path}/sweeps.db"
        )
    if path.exists():
        try:
            database = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
            try:
                database.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                database.close()
        except sqlite3.Error as exc:
            raise StorageError(
                f"{key} {shown!r}: {str(path)!r} is not a usable SQLite database ({exc}): move it away "
                f"(a new one is created) or fix {key}"
            ) from None
        if not os.access(path, os.R_OK | os.W_OK):
            raise StorageError(f"{key} {shown!r}: {str(path)!r} is not writable: fix its permissions or {key}")
    _check_writable_place(path, key=key, shown=shown)


def _check_writable_place(path: Path, *, key: str, shown: str) -> None:
    """``path`` can be created or written: its directory exists and is writable (SQLite and
    Optuna's journal also write lock and journal files beside it)."""
    if path.exists() and not path.is_file():
        raise StorageError(f"{key} {shown!r}: {str(path)!r} is not a regular file: name a file")
    parent = path.parent
    if not parent.is_dir():
        raise StorageError(f"{key} {shown!r}: directory {str(parent)!r} does not exist: create it, or fix {key}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StorageError(f"{key} {shown!r}: directory {str(parent)!r} is not writable: fix its permissions or {key}")


def _check_server(url: str, *, key: str, shown: str, timeout: float, default_port: int) -> None:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or default_port
    except ValueError as exc:
        raise StorageError(f"{key} {shown!r}: {exc}: write it as scheme://[user@]host[:port]/database") from None
    if not host:  # a local socket (the driver's default): the driver itself reports what fails
        return

    def connect() -> None:
        socket.create_connection((host, port), timeout=timeout).close()

    unreachable = f"{key} {shown!r}: the database server {host}:{port} is unreachable"
    try:  # the name lookup too is bounded
        _with_deadline(connect, uri=url, doing="connecting", timeout=timeout + 1)
    except StorageError:
        raise StorageError(f"{unreachable} (no answer within {timeout:g} s): start it, or fix {key}") from None
    except OSError as exc:
        raise StorageError(f"{unreachable} ({exc.strerror or exc}): start it, or fix {key}") from None


@dataclass(frozen=True)
class SweepLocation:
    """A directory in a filesystem: ``filesystem`` and ``path`` are what Ray Tune's
    ``storage_filesystem``/``storage_path`` take; ``uri`` is how users name it (a local
    absolute path, or ``scheme://...`` with the original query)."""

    filesystem: pafs.FileSystem
    path: str
    uri: str

    @classmethod
    def of(cls, storage: str | os.PathLike[str]) -> SweepLocation:
        """The location of a local path or a URI."""
        if not is_uri(storage):
            local = Path(storage).expanduser().resolve()
            return cls(pafs.LocalFileSystem(), local.as_posix(), str(local))
        try:
            uri = check_storage_uri(str(storage))
        except ValueError as exc:
            raise StorageError(f"storage {exc}") from None
        try:
            filesystem, path = _with_deadline(functools.partial(_open, uri), uri=uri, doing="opening it")
        except (ValueError, OSError) as exc:
            raise StorageError(
                f"cannot open storage {uri!r} ({str(exc).splitlines()[0][:200]}): check the URI (for S3 give "
                "?region=... or ?endpoint_override=...), the network and the credentials in the environment"
            ) from None
        return cls(filesystem, path.rstrip("/"), uri)

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def local_path(self) -> Path:
        """The directory itself when local; else its report mirror under ``$SWEEPER_CACHE``."""
        if self.is_local:
            return Path(self.path)
        cache = Path(os.environ.get("SWEEPER_CACHE", "~/.cache/sweeper")).expanduser()
        scheme = urlsplit(self.uri).scheme.lower()
        return cache.resolve() / "storage" / scheme / self.path.lstrip("/")

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    def child(self, name: str) -> SweepLocation:
        if self.is_local:
            return SweepLocation.of(Path(self.path) / name)
        parts = urlsplit(self.uri)
        uri = parts._replace(path=f"{parts.path.rstrip('/')}/{name}").geturl()
        return SweepLocation(self.filesystem, f"{self.path}/{name}", uri)

    def parent_uri(self) -> str:
        """The ``storage_path`` that holds this directory."""
        if self.is_local:
            return str(Path(self.path).parent)
        parts = urlsplit(self.uri)
        return parts._replace(path=str(PurePosixPath(parts.path).parent)).geturl()

    def _file(self, name: str) -> str:
        return f"{self.path}/{name}"

    def _call(self, call: Callable[[], _T], doing: str) -> _T:
        """``call()`` here, or for a remote filesystem with the deadline of :func:`storage_timeout_s`."""
        return call() if self.is_local else _with_deadline(call, uri=self.uri, doing=doing)

    def _info(self, path: str) -> pafs.FileInfo:
        try:
            return self._call(functools.partial(self.filesystem.get_file_info, path), "looking up a file")
        except OSError as exc:
            raise StorageError(
                f"cannot reach storage {self.uri!r} ({str(exc).splitlines()[0][:200]}): check the URI, the "
                "endpoint and the credentials in the environment"
            ) from None

    def exists(self, name: str | None = None) -> bool:
        """Whether this directory (or the file/directory ``name`` in it) exists."""
        return self._info(self._file(name) if name else self.path).type != pafs.FileType.NotFound

    def is_file(self, name: str) -> bool:
        return self._info(self._file(name)).type == pafs.FileType.File

    def modified(self, name: str) -> float | None:
        """When the file ``name`` was last written (seconds since the epoch); None if absent."""
        info = self._info(self._file(name))
        if info.type == pafs.FileType.NotFound or info.mtime is None:
            return None
        return info.mtime.timestamp()

    def read_bytes(self, name: str) -> bytes:
        def read() -> bytes:
            with self.filesystem.open_input_stream(self._file(name)) as stream:
                return stream.readall()

        return self._call(read, f"reading {name}")

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` (a relative path) whole or not at all: locally with
        :func:`write_atomic`; an object store replaces an object in one request."""
        if self.is_local:
            target = Path(self._file(name))
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, data)
            return

        def write() -> None:
            with self.filesystem.open_output_stream(self._file(name)) as stream:
                stream.write(data)

        self._call(write, f"writing {name}")

    def delete(self, name: str) -> None:
        """Delete the file ``name`` (relative path) if it exists."""
        if self.is_local:
            Path(self._file(name)).unlink(missing_ok=True)
        elif self.is_file(name):
            self._call(functools.partial(self.filesystem.delete_file, self._file(name)), f"deleting {name}")

    def glob(self, pattern: str) -> list[str]:
        """Names of the files directly in this directory that match ``pattern``, sorted."""
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        infos = self._call(functools.partial(self.filesystem.get_file_info, selector), "listing the sweep")
        return sorted(
            PurePosixPath(info.path).name
            for info in infos
            if info.type == pafs.FileType.File and fnmatch(PurePosixPath(info.path).name, pattern)
        )

    def upload(self, files: list[Path], *, root: Path) -> None:
        """Copy local ``files`` (under ``root``) to the same relative places in this directory."""
        for file in files:
            self.write_bytes(file.relative_to(root).as_posix(), file.read_bytes())


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write a temporary file, flush it to disk, then rename it over ``path``: a crash at any
    point leaves either the previous file or the new one, never a truncated one."""
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path


def storage_timeout_s() -> float:
    """Seconds a remote storage call may take (``$SWEEPER_STORAGE_TIMEOUT_S``, default 30)."""
    try:
        return max(0.1, float(os.environ.get(STORAGE_TIMEOUT_ENV, "30")))
    except ValueError:
        return 30.0


def _with_deadline(call: Callable[[], _T], *, uri: str, doing: str, timeout: float | None = None) -> _T:
    """``call()`` in a daemon thread, or :class:`StorageError` once ``timeout`` (default
    :func:`storage_timeout_s`) ran out: pyarrow's clients retry an unreachable endpoint for
    minutes, and a daemon thread left behind does not keep the process from exiting."""
    timeout = storage_timeout_s() if timeout is None else timeout
    box: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()

    def run() -> None:
        try:
            box.put((True, call()))
        except BaseException as exc:  # handed to the caller's thread, raised there
            box.put((False, exc))

    threading.Thread(target=run, name="sweeper-storage", daemon=True).start()
    try:
        ok, value = box.get(timeout=timeout)
    except queue.Empty:
        raise StorageError(
            f"cannot reach storage {redact_credentials(uri)!r} within {timeout:g} s ({doing}): check the URI, the "
            f"network and the credentials in the environment (${STORAGE_TIMEOUT_ENV} sets the limit)"
        ) from None
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


@functools.cache
def _open(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem and path for ``uri``, opened once per process: opening an S3 URI
    without a region asks the bucket for it."""
    return pafs.FileSystem.from_uri(uri)
