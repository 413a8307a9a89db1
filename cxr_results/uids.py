"""Our UID root, stable UIDs for each result version, and recognising our own objects.

UID root (``CXR_UID_ROOT``)
    A site may configure an organisational root it owns (e.g. ``1.2.826.0.1.3680043.10.1234``).
    Without one, :func:`generate_uid_root` makes a UUID-derived root ``2.25.<uuid int>``
    (PS3.5 B.2; the owner of a UUID arc may allocate sub-arcs under it). The default must
    stay the same across restarts, or :func:`is_our_uid` would no longer recognise what we
    sent before: :func:`load_or_create_uid_root` keeps it in a small file (the service
    passes a path under its data folder). A root is at most :data:`MAX_ROOT_LENGTH`
    characters so that every derived UID keeps at least 19 hashed digits.

Derived UIDs
    ``<root>.<n>`` where ``n`` is the SHA-256 of ``root``, the study's StudyInstanceUID,
    the result version and the object kind, read as an integer and cut to the digits that
    keep the UID within 64 characters. The same inputs always give the same UID, so
    building the objects of one result version twice gives identical UIDs and a resend
    after an ambiguous failure overwrites, never duplicates, on the PACS.

Superseding (see :func:`result_uids`)
    Series Instance UIDs depend on the study only: every result version of a study files
    its Secondary Capture into one series, its SR into another and its heatmap
    Segmentation into a third. SOP Instance UIDs depend
    on the version too, and ``InstanceNumber`` is the result version, so a newer result
    sorts after the older one in the same series and both stay auditable.

Recognition
    :func:`is_our_uid` answers whether a UID lies under our root; :func:`is_our_dataset`
    says a received data set is ours only when its SOP Instance or Series Instance UID lies
    under our root **and** its SOP class is one we create (:data:`OUR_SOP_CLASSES`). A
    recognised object is never scored or re-sent. Our Manufacturer plus SeriesDescription
    marker alone proves nothing (anyone can write it): :func:`carries_our_marker` lets the
    listener refuse such an object with a status instead of taking it for ours.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ParametricMapStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from cxr_results.errors import UidRootError

__all__ = [
    "MANUFACTURER",
    "MAX_ROOT_LENGTH",
    "OUR_SOP_CLASSES",
    "SERIES_DESCRIPTION_PREFIX",
    "ObjectKind",
    "ResultUids",
    "carries_our_marker",
    "derive_uid",
    "generate_uid_root",
    "is_our_dataset",
    "is_our_uid",
    "load_or_create_uid_root",
    "result_uids",
    "validate_uid_root",
]

#: Longest UID (PS3.5 9.1).
MAX_UID_LENGTH = 64
#: Longest accepted root: 64 - 1 (the dot) - 19 digits (about 63 bits of hash) = 44, which
#: is exactly the length of the longest ``2.25.<uuid int>`` root.
MAX_ROOT_LENGTH = 44
#: Manufacturer (0008,0070) of every object we create.
MANUFACTURER = "cxr-triage"
#: Every SeriesDescription we write starts with this.
SERIES_DESCRIPTION_PREFIX = "cxr-triage"

#: The SOP classes of the objects we create (and only these can be ours): the heatmap
#: Secondary Capture and the result SR (Comprehensive SR; Comprehensive 3D SR and the
#: Parametric Map are the IHE AI Results forms). Keep in step with :mod:`cxr_results.objects`.
OUR_SOP_CLASSES: frozenset[str] = frozenset(
    {
        SecondaryCaptureImageStorage,
        ComprehensiveSRStorage,
        Comprehensive3DSRStorage,
        ParametricMapStorage,
        SegmentationStorage,
    }
)

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class ObjectKind(StrEnum):
    """What a derived UID identifies (part of the hashed name, never change the values)."""

    SC_SERIES = "sc-series"
    SR_SERIES = "sr-series"
    SC_INSTANCE = "sc-instance"
    SR_INSTANCE = "sr-instance"
    SEG_SERIES = "seg-series"
    SEG_INSTANCE = "seg-instance"
    TRACKING = "tracking"
    DEVICE = "device"


def validate_uid_root(root: str) -> str:
    """Return ``root`` without a trailing dot, or raise :class:`UidRootError`."""
    text = root.strip().removesuffix(".")
    if not text or not _UID.match(text):
        raise UidRootError(
            f"CXR_UID_ROOT {root!r} is not a UID root: digits in dot-separated components, "
            "no leading zeros (e.g. 1.2.826.0.1.3680043.10.1234)"
        )
    if len(text) > MAX_ROOT_LENGTH:
        raise UidRootError(
            f"CXR_UID_ROOT {root!r} is {len(text)} characters; at most {MAX_ROOT_LENGTH} "
            "leave room for the derived part within the 64-character UID limit"
        )
    return text


def generate_uid_root() -> str:
    """A new UUID-derived root ``2.25.<uuid4 int>`` (at most 44 characters)."""
    return f"2.25.{uuid.uuid4().int}"


def load_or_create_uid_root(path: Path, configured: str | None = None) -> str:
    """The UID root to use: ``configured`` (``CXR_UID_ROOT``) when set, else the root kept
    in ``path``, creating it (atomically, first writer wins) when the file is absent."""
    if configured is not None and configured.strip():
        return validate_uid_root(configured)
    if path.exists():
        return validate_uid_root(path.read_text(encoding="ascii"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
    tmp.write_text(generate_uid_root() + "\n", encoding="ascii")
    try:
        os.link(tmp, path)  # fails if another process created it first: theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return validate_uid_root(path.read_text(encoding="ascii"))


def derive_uid(root: str, *parts: str) -> str:
    """``<root>.<n>``: ``n`` from the SHA-256 of root and ``parts``, within 64 characters."""
    root = validate_uid_root(root)
    digest = hashlib.sha256("\x1f".join((root, *parts)).encode("utf-8")).digest()
    room = MAX_UID_LENGTH - len(root) - 1
    number = int.from_bytes(digest, "big") % (10**room)
    return f"{root}.{number}"


@dataclass(frozen=True)
class ResultUids:
    """The UIDs and instance number of one result version of one study."""

    root: str
    study_instance_uid: str
    result_version: int
    sc_series_instance_uid: str
    sc_sop_instance_uid: str
    sr_series_instance_uid: str
    sr_sop_instance_uid: str
    device_uid: str
    seg_series_instance_uid: str = ""
    seg_sop_instance_uid: str = ""

    @property
    def instance_number(self) -> int:
        """InstanceNumber of every object: the result version (1, 2, ...)."""
        return self.result_version

    def tracking_uid(self, sop_instance_uid: str) -> str:
        """The SR's Tracking UID of the analysed image ``sop_instance_uid``: the same in
        every result version of the study, so a viewer follows one image's finding across
        superseding reports."""
        return derive_uid(self.root, self.study_instance_uid, ObjectKind.TRACKING, sop_instance_uid)


def result_uids(root: str, study_instance_uid: str, result_version: int) -> ResultUids:
    """Stable UIDs for ``result_version`` (>= 1) of the study ``study_instance_uid``."""
    if result_version < 1:
        raise ValueError(f"result_version must be 1 or more, got {result_version}")
    version = str(result_version)
    root = validate_uid_root(root)
    return ResultUids(
        root=root,
        study_instance_uid=study_instance_uid,
        result_version=result_version,
        sc_series_instance_uid=derive_uid(root, study_instance_uid, ObjectKind.SC_SERIES),
        sc_sop_instance_uid=derive_uid(root, study_instance_uid, version, ObjectKind.SC_INSTANCE),
        sr_series_instance_uid=derive_uid(root, study_instance_uid, ObjectKind.SR_SERIES),
        sr_sop_instance_uid=derive_uid(root, study_instance_uid, version, ObjectKind.SR_INSTANCE),
        device_uid=derive_uid(root, ObjectKind.DEVICE),
        seg_series_instance_uid=derive_uid(root, study_instance_uid, ObjectKind.SEG_SERIES),
        seg_sop_instance_uid=derive_uid(root, study_instance_uid, version, ObjectKind.SEG_INSTANCE),
    )


def is_our_uid(uid: object, root: str) -> bool:
    """True when ``uid`` is ``root`` itself or lies under it."""
    if uid is None:
        return False
    text = str(uid).strip().rstrip("\x00")
    base = root.strip().removesuffix(".")
    return bool(base) and (text == base or text.startswith(base + "."))


def is_our_dataset(ds: Dataset, root: str) -> bool:
    """True when ``ds`` is an object cxr-triage created (forwarded back to us by a PACS):
    its SOP class is one of :data:`OUR_SOP_CLASSES` and its SOP Instance or Series
    Instance UID lies under ``root``. Manufacturer and SeriesDescription are not looked at:
    they can be spoofed."""
    if str(ds.get("SOPClassUID", "") or "").strip() not in OUR_SOP_CLASSES:
        return False
    return any(
        is_our_uid(ds.get(keyword), root) for keyword in ("SOPInstanceUID", "SeriesInstanceUID")
    )


def carries_our_marker(ds: Dataset) -> bool:
    """True when ``ds`` says it was made by cxr-triage (our Manufacturer plus a
    SeriesDescription starting with our prefix). Not proof that it is ours: see
    :func:`is_our_dataset`."""
    manufacturer = str(ds.get("Manufacturer", "") or "").strip()
    description = str(ds.get("SeriesDescription", "") or "").strip()
    return manufacturer == MANUFACTURER and description.startswith(SERIES_DESCRIPTION_PREFIX)
