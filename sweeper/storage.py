"""Where a sweep lives: a local (or mounted, shared) directory, or a directory in any pyarrow
filesystem given as a URI (``s3://bucket/sweeps``, ``gs://...``, ``hdfs://...``, ``abfs://...``).

Ray Tune writes trials and checkpoints there through the same pyarrow filesystem; sweeper keeps
its own files beside them (``sweeper.yaml``, ``trials.csv``, the report). A URI may carry
pyarrow's options as a query, e.g. ``s3://sweeps/runs?endpoint_override=minio:9000&scheme=http``
for an S3-compatible server; credentials come from the environment (``AWS_ACCESS_KEY_ID``, an
instance role, ``GOOGLE_APPLICATION_CREDENTIALS``, ...) and are refused in the URI, which is
saved and logged.

The report's files are written to a local directory first (plots are made by matplotlib, which
needs a file) and, for a URI, uploaded next to the trials; the local copy stays in
``$SWEEPER_CACHE`` (default ``~/.cache/sweeper``) for viewing.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qsl, urlsplit

import pyarrow.fs as pafs

__all__ = ["StorageError", "SweepLocation", "check_storage_uri", "is_uri", "write_atomic"]

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Schemes pyarrow's FileSystem.from_uri understands.
_SCHEMES = {"file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"}
_CREDENTIALS = {"access_key", "secret_key", "session_token", "sas_token", "account_key", "client_secret"}


class StorageError(RuntimeError):
    """The storage cannot be reached or used; the message says what to fix."""


def is_uri(value: str | os.PathLike[str]) -> bool:
    return bool(_URI.match(str(value)))


def check_storage_uri(value: str) -> str:
    """A URI ``storage_path`` pyarrow can open and that carries no credentials (for config
    validation; does not contact the storage)."""
    parts = urlsplit(value)
    if parts.scheme.lower() not in _SCHEMES:
        raise ValueError(
            f"{value!r}: unsupported storage scheme {parts.scheme!r}; use a path, or one of "
            + ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        )
    secret = sorted(_CREDENTIALS & {key.lower() for key, _ in parse_qsl(parts.query)})
    if secret:
        raise ValueError(
            f"storage_path carries {', '.join(secret)}: credentials do not belong in the URI (it is saved and "
            "logged); set them in the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, an instance role, "
            "GOOGLE_APPLICATION_CREDENTIALS, ...)"
        )
    if not parts.netloc and parts.scheme.lower() not in {"file", "hdfs", "viewfs"}:
        raise ValueError(f"{value!r}: the URI names no bucket/container, e.g. s3://my-bucket/sweeps")
    return value


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
        uri = check_storage_uri(str(storage))
        try:
            filesystem, path = _open(uri)
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

    def _info(self, path: str) -> pafs.FileInfo:
        try:
            return self.filesystem.get_file_info(path)
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

    def read_bytes(self, name: str) -> bytes:
        with self.filesystem.open_input_stream(self._file(name)) as stream:
            return stream.readall()

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` (a relative path) whole or not at all: locally with
        :func:`write_atomic`; an object store replaces an object in one request."""
        if self.is_local:
            target = Path(self._file(name))
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, data)
            return
        with self.filesystem.open_output_stream(self._file(name)) as stream:
            stream.write(data)

    def glob(self, pattern: str) -> list[str]:
        """Names of the files directly in this directory that match ``pattern``, sorted."""
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        return sorted(
            PurePosixPath(info.path).name
            for info in self.filesystem.get_file_info(selector)
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


@functools.cache
def _open(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem and path for ``uri``, opened once per process: opening an S3 URI
    without a region asks the bucket for it."""
    return pafs.FileSystem.from_uri(uri)
