"""The exclusive claim a driver takes on its sweep before it writes anything.

Two drivers on one sweep (two ``sweeper run`` of the same name started together, a resume while
the sweep still runs) would interleave two Tune experiment states, two sets of MLflow runs and
one ``trials.csv``. So :func:`claim_sweep` comes first, and only one driver gets it:

- **A new sweep on a path** (local or a shared mount): ``mkdir`` of the sweep directory is the
  atomic test-and-create, so of two starts exactly one creates it and the other is told the
  sweep already exists.
- **Every driver, new or resuming, on a path**: the marker ``.sweeper-claim`` is created with
  ``O_CREAT | O_EXCL`` and holds who runs the sweep (host, pid, since). The check and the
  take-over of a dead driver's marker happen under an ``flock`` of the sweep directory, so two
  drivers cannot both take over the same dead marker. Where a directory cannot be locked (NFS
  emulates ``flock`` with byte-range locks, which need a file open for writing), ``O_EXCL``
  alone decides: creation stays exclusive, and only two drivers taking over the same dead
  driver's marker in the same instant could both proceed.
- **An object store** (``s3://``, ``gs://``, ...): pyarrow has no exclusive create and no
  conditional put. The driver writes its marker, waits :data:`SETTLE_S` and reads it back; of
  claimants that wrote in that window the last writer wins and the others stop. S3, GCS and
  Azure Blob read back what was last written (strong read-after-write consistency), so this is
  exclusive as long as a claimant's check-then-write takes less than :data:`SETTLE_S`; it is
  not a compare-and-swap.

A marker whose driver is dead does not block a resume forever: it lapses when its pid is gone
(a driver on this host) or when its heartbeat (the marker's mtime, refreshed every
:data:`HEARTBEAT_S` while the driver runs) is older than :data:`STALE_AFTER_S` (any host).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sweeper.errors import StorageError, SweepError
from sweeper.storage import SweepLocation

__all__ = ["CLAIM_FILE", "HEARTBEAT_S", "STALE_AFTER_S", "ClaimHeld", "SweepClaim", "claim_sweep", "no_resumable_sweep"]

_log = logging.getLogger(__name__)

CLAIM_FILE = ".sweeper-claim"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
SETTLE_S = 2.0
_LOCK_WAIT_S = 10.0  # the lock is held for milliseconds, while a claim is checked or released


class SweepClaim:
    """One driver's claim on a sweep directory, refreshed by a heartbeat until released.

    Attributes:
        location: The sweep directory.
        holder: What the marker says: ``host``, ``pid``, ``since``, ``token``.
    """

    def __init__(self, location: SweepLocation, holder: dict[str, Any], *, created: list[Path]) -> None:
        self.location = location
        self.holder = holder
        self._created = created  # directories this claim made (a new local sweep), innermost last
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="sweeper-claim-heartbeat", daemon=True)
        self._heartbeat.start()

    def release(self) -> None:
        """Give the claim up; the sweep directory and the directories made for it go too when
        nothing else was written into them (a start refused by a later check)."""
        self._stop.set()
        with contextlib.suppress(StorageError, OSError):  # the sweep's outcome matters more
            if self.location.is_local:
                directory = Path(self.location.path)
                with _locked(directory):
                    if _holder_of(self.location).get("token") == self.holder["token"]:
                        (directory / CLAIM_FILE).unlink()
                if self._created and not os.listdir(directory):
                    for made in reversed(self._created):
                        made.rmdir()
            elif _holder_of(self.location).get("token") == self.holder["token"]:
                self.location.delete(CLAIM_FILE)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(StorageError, OSError):
                if _holder_of(self.location).get("token") != self.holder["token"]:
                    return  # taken over after a stall longer than STALE_AFTER_S: nothing to refresh
                if self.location.is_local:
                    os.utime(Path(self.location.path) / CLAIM_FILE)
                else:
                    self.holder["heartbeat"] = time.time()
                    self.location.write_bytes(CLAIM_FILE, _encode(self.holder))


class ClaimHeld(SweepError):
    """Another driver, alive as far as this one can tell, holds the sweep's claim."""


def claim_sweep(location: SweepLocation, *, name: str, resume: bool, wait_s: float = 0.0) -> SweepClaim:
    """Take the exclusive claim on the sweep ``name`` at ``location``: for a new sweep
    (``resume`` false) the directory must not exist yet, for a resume it must. With
    ``wait_s``, a claim held by another driver is waited for that long (a requeued batch job
    whose previous driver died on another node: its claim lapses after :data:`STALE_AFTER_S`).

    Raises:
        SweepError: If the sweep exists (new) or does not (resume), or another live driver
            holds the claim (:class:`ClaimHeld`).
        StorageError: If the sweep directory cannot be created (``storage_path`` is a file,
            read-only, ...) or the storage cannot be reached.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return _claim_once(location, name=name, resume=resume)
        except ClaimHeld as held:
            if time.monotonic() + HEARTBEAT_S > deadline:
                raise
            _log.warning("%s; waiting up to %.0f s more", held, deadline - time.monotonic())
            time.sleep(HEARTBEAT_S)


def _claim_once(location: SweepLocation, *, name: str, resume: bool) -> SweepClaim:
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "token": uuid.uuid4().hex,
        "heartbeat": time.time(),  # an object store's; a path's is the marker's mtime
    }
    if not location.is_local:
        return _claim_remote(location, name=name, resume=resume, holder=holder)
    directory = Path(location.path)
    created = _make_parents(directory.parent) if not resume else []
    try:
        if not resume:
            _make_sweep_directory(location, name=name)
            created.append(directory)
        elif not directory.is_dir():
            raise SweepError(no_resumable_sweep(location))
        with _locked(directory):
            _create_marker(location, name=name, holder=holder)
    except BaseException:
        for made in reversed(created):
            with contextlib.suppress(OSError):
                made.rmdir()
        raise
    return SweepClaim(location, holder, created=created)


def no_resumable_sweep(location: SweepLocation) -> str:
    return (
        f"no resumable sweep at {location.uri}: start it without --resume "
        "(delete the directory first if it holds an aborted start)"
    )


def _make_parents(parent: Path) -> list[Path]:
    """Create ``parent`` and the directories above it that are missing; return those made."""
    missing = [path for path in (parent, *parent.parents) if not path.exists()][::-1]
    for path in missing:
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise StorageError(_unusable(parent, exc)) from None
    return [path for path in missing if path.is_dir()]


def _make_sweep_directory(location: SweepLocation, *, name: str) -> None:
    directory = Path(location.path)
    try:
        directory.mkdir()
    except FileExistsError:
        raise SweepError(
            f"sweep {name!r} already exists at {location.uri}: resume it with --resume, or choose another --name"
        ) from None
    except OSError as exc:
        raise StorageError(_unusable(directory.parent, exc)) from None


def _unusable(storage: Path, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOTDIR:
        existing = next((path for path in (storage, *storage.parents) if path.exists()), storage)
        reason = f"{existing} is not a directory"
    return f"storage_path {str(storage)!r}: cannot create the sweep directory there ({reason}): give a writable one"


def _create_marker(location: SweepLocation, *, name: str, holder: dict[str, Any]) -> None:
    """``O_EXCL``-create the marker, taking over a dead driver's (callers hold the lock)."""
    marker = Path(location.path) / CLAIM_FILE
    for _ in range(2):
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            other = _holder_of(location)
            if _alive(other, heartbeat=location.modified(CLAIM_FILE)):
                raise ClaimHeld(_busy(location, name, other)) from None
            marker.unlink(missing_ok=True)
            continue
        except OSError as exc:
            raise StorageError(_unusable(marker.parent, exc)) from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(_encode(holder))
            handle.flush()
            os.fsync(handle.fileno())
        return
    raise ClaimHeld(_busy(location, name, _holder_of(location)))


def _claim_remote(location: SweepLocation, *, name: str, resume: bool, holder: dict[str, Any]) -> SweepClaim:
    exists = location.exists()
    if exists and not resume:
        raise SweepError(
            f"sweep {name!r} already exists at {location.uri}: resume it with --resume, or choose another --name"
        )
    if resume and not exists:
        raise SweepError(no_resumable_sweep(location))
    if location.is_file(CLAIM_FILE):
        other = _holder_of(location)
        if _alive(other, heartbeat=other.get("heartbeat")):
            raise ClaimHeld(_busy(location, name, other))
    location.write_bytes(CLAIM_FILE, _encode(holder))
    time.sleep(SETTLE_S)  # a claimant that checked before this write landed has written by now
    winner = _holder_of(location)
    if winner.get("token") != holder["token"]:
        raise ClaimHeld(_busy(location, name, winner))
    return SweepClaim(location, holder, created=[])


def _alive(holder: dict[str, Any], *, heartbeat: object) -> bool:
    """Whether the driver of a marker may still run: its ``heartbeat`` (seconds since the
    epoch) is recent and, on this host, its pid exists. An unreadable marker is one whose
    writer died while writing it (it writes under the lock, right after creating it)."""
    if not holder or not isinstance(heartbeat, int | float) or time.time() - heartbeat > STALE_AFTER_S:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # a process of another user: alive
    return True


def _busy(location: SweepLocation, name: str, holder: dict[str, Any]) -> str:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
    return (
        f"{location.uri}/{CLAIM_FILE}: sweep {name!r} is being run by {who}: wait for it to end, or stop it; "
        f"the claim of a dead driver lapses when its pid is gone (same host) or {STALE_AFTER_S:g} s after its "
        "last heartbeat"
    )


def _holder_of(location: SweepLocation) -> dict[str, Any]:
    """What the marker says; empty when there is none or it is unreadable."""
    try:
        holder = json.loads(location.read_bytes(CLAIM_FILE))
    except (OSError, ValueError):  # absent (FileNotFoundError is an OSError) or half-written
        return {}
    return holder if isinstance(holder, dict) else {}


def _encode(holder: dict[str, Any]) -> bytes:
    return json.dumps(holder).encode()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise the drivers checking, taking or releasing a claim in ``directory`` (an
    ``flock`` of the directory itself: nothing is left behind)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SweepError(f"{directory}: locked by another driver for {_LOCK_WAIT_S:g} s: retry") from None
                time.sleep(0.05)
            except OSError:  # not lockable (NFS: EBADF, ENOLCK): O_EXCL alone decides
                break
        yield
    finally:
        os.close(fd)
