"""Durable instance storage named by URI.

``file:///shared/volume/instances`` is the default (a volume every worker mounts). The
interface is small on purpose so an S3-compatible store can be added as another scheme
without touching the listener or the worker.

Keys are built from sanitised DICOM UIDs only (digits and dots), never from patient data.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from cxr_common.errors import ConfigurationError, InstanceMissingError, StorageError

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def sanitise_uid(uid: str) -> str:
    """Return a DICOM UID safe to use in a path, or raise ValueError."""
    cleaned = uid.strip().rstrip("\x00").strip()
    if not cleaned or len(cleaned) > 64 or not _UID.match(cleaned):
        raise ValueError("not a valid DICOM UID")
    return cleaned


def instance_key(study_instance_uid: str, sop_instance_uid: str) -> str:
    """The storage key of one instance: ``<study uid>/<sop uid>.dcm``."""
    return f"{sanitise_uid(study_instance_uid)}/{sanitise_uid(sop_instance_uid)}.dcm"


class Storage(Protocol):
    """Where the listener puts instances. Listener, worker and tests use only this (and
    :func:`read_instance`); how a scheme lays instances out is its own business."""

    def staging_dir(self) -> Path:
        """A folder on the same filesystem for temp files that ``put_file`` will move.
        Raises OSError when it cannot be created."""
        ...

    def uri(self, key: str) -> str:
        """The URI of the instance stored (or to be stored) under ``key``."""
        ...

    def exists(self, key: str) -> bool:
        """True when an instance is stored under ``key``."""
        ...

    def put_file(self, key: str, source: Path) -> None:
        """Move ``source`` into place under ``key`` atomically (StorageError on failure)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the instance under ``key``, if there is one (StorageError on failure)."""
        ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStorage:
    """Instances as files under a root folder, moved into place with fsync + rename."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def staging_dir(self) -> Path:
        path = self._root / ".staging"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _target(self, key: str) -> Path:
        target = (self._root / key).resolve()
        if self._root.resolve() not in target.parents:
            raise StorageError("storage key escapes the storage root")
        return target

    def uri(self, key: str) -> str:
        return self._target(key).as_uri()

    def exists(self, key: str) -> bool:
        return self._target(key).exists()

    def put_file(self, key: str, source: Path) -> None:
        target = self._target(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(source, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(source, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            raise StorageError(f"cannot store instance: {exc.strerror}") from exc

    def delete(self, key: str) -> None:
        try:
            self._target(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot remove instance: {exc.strerror}") from exc


def open_storage(uri: str) -> Storage:
    """Open the storage that ``uri`` names (``file://`` today)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return FileStorage(Path(unquote(parsed.path)))
    raise ConfigurationError(
        f"storage scheme {parsed.scheme!r} is not supported yet: use file:///path/to/volume"
    )


def read_instance(uri: str) -> bytes:
    """Read one stored instance by its URI."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise ConfigurationError(f"storage scheme {parsed.scheme!r} is not supported yet")
    try:
        return Path(unquote(parsed.path)).read_bytes()
    except FileNotFoundError as exc:
        raise InstanceMissingError("stored instance is missing") from exc
    except OSError as exc:
        raise StorageError(f"cannot read stored instance: {exc.strerror}") from exc
