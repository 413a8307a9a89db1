"""A study's patient: fixed by its first instance, compared by keyed hashes.

A Study Instance UID names one patient's study. The first instance recorded for a study
fixes its patient; each later instance must name the same patient on every identifying
attribute (:data:`IDENTITY_KEYWORDS`: Patient ID, Issuer of Patient ID, Patient's Name,
Birth Date and Sex), or it is refused (``RefusalCode.PATIENT_CONFLICT``), recorded as a
conflict and shown for a person to resolve. The database decides between concurrent
first instances of one study (one ``studies`` row per Study Instance UID, claimed with
``INSERT … ON CONFLICT``; ``cxr_db.instances.writes.record_instance_checked``).

What counts as the same value (deliberate, see :func:`normalise`):

* leading and trailing spaces never matter (DICOM pads values with spaces);
* Patient's Name: compared component by component (family^given^middle^prefix^suffix),
  each trimmed, **case-insensitive**, trailing empty components ignored, alphabetic
  group only (``DOE^JANE``, ``Doe^Jane `` and ``DOE^JANE^^^`` are one name; ``DOE^JANE``
  and ``DOE^JOHN`` are not); the ideographic and phonetic groups are not compared;
* Patient's Sex: case-insensitive;
* Patient ID, Issuer of Patient ID and Birth Date: exact (after trimming); an identifier
  is opaque, and ``19700101`` and ``1970-01-01`` are different values;
* an attribute **absent or empty on one side** and present on the other is a
  disagreement: a study cannot show one patient for both, so a person decides.

Nothing of the patient is kept in plain text for this: each attribute is stored as a
keyed hash (HMAC-SHA256 with the installation's patient key, cut to 64 bits, enough to
compare, not to search), so a copy of the database alone does not give the values
back. The key is ``CXR_PATIENT_KEY`` or a random key generated once and kept in
``CXR_DATA_DIR/patient-key`` (:func:`load_or_create_patient_key`); every process that
ingests must use the same key, and the stored form names the key (a short id of it), so
an instance hashed under another key is refused as a configuration error rather than
taken for another patient.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from cxr_common.errors import ConfigurationError

__all__ = [
    "IDENTITY_KEYWORDS",
    "PatientIdentity",
    "load_or_create_patient_key",
    "normalise",
    "patient_identity",
]

#: The attributes that identify a study's patient, in the order they are reported.
IDENTITY_KEYWORDS: tuple[str, ...] = (
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
)
#: Version of the stored form (bump when :func:`normalise` changes meaning).
_FORM = 1
_HASH_HEX = 16
_KEY_BYTES = 32


def normalise(keyword: str, value: Any) -> str:
    """The comparable form of one identifying value (rules in the module docstring)."""
    text = "" if value is None else str(value)
    text = "".join(ch for ch in text if ch.isprintable()).strip()
    if keyword == "PatientName":
        alphabetic = text.split("=", 1)[0]
        parts = [" ".join(part.split()).upper() for part in alphabetic.split("^")]
        while parts and not parts[-1]:
            parts.pop()
        return "^".join(parts)
    if keyword == "PatientSex":
        return text.upper()
    return text


@dataclass(frozen=True)
class PatientIdentity:
    """The keyed hashes of one instance's identifying attributes (no values)."""

    key_id: str
    hashes: Mapping[str, str]

    def as_json(self) -> dict[str, Any]:
        """The stored form (``studies.patient_identity``)."""
        return {"form": _FORM, "key": self.key_id, **dict(self.hashes)}

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]) -> PatientIdentity:
        return cls(
            key_id=str(stored.get("key", "")),
            hashes={k: str(stored.get(k, "")) for k in IDENTITY_KEYWORDS},
        )

    def same_key(self, other: PatientIdentity) -> bool:
        return self.key_id == other.key_id

    def differing(self, other: PatientIdentity) -> tuple[str, ...]:
        """The keywords whose values differ (attribute names only, never values)."""
        return tuple(k for k in IDENTITY_KEYWORDS if self.hashes.get(k) != other.hashes.get(k))


def _key_id(key: bytes) -> str:
    return hmac.new(key, b"cxr-triage patient key id", hashlib.sha256).hexdigest()[:8]


def patient_identity(ds: Dataset, key: bytes) -> PatientIdentity:
    """The identity of ``ds``'s patient under ``key``. Reads the header (a corrupt
    element raises, as any read of it would)."""
    hashes: dict[str, str] = {}
    for keyword in IDENTITY_KEYWORDS:
        value = normalise(keyword, ds.get(keyword))
        message = f"{keyword}\x1f{value}".encode("utf-8", "surrogatepass")
        hashes[keyword] = hmac.new(key, message, hashlib.sha256).hexdigest()[:_HASH_HEX]
    return PatientIdentity(_key_id(key), hashes)


def load_or_create_patient_key(path: Path, configured: str | None = None) -> bytes:
    """The patient key: ``configured`` (``CXR_PATIENT_KEY``) when set, else the key kept in
    ``path`` (hex), created when absent (random, mode 0600, atomically: the first writer
    wins, so processes sharing the data folder share the key)."""
    if configured is not None and configured.strip():
        return configured.strip().encode("utf-8")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(_KEY_BYTES) + "\n")
        try:
            with contextlib.suppress(FileExistsError):  # another process was first: theirs
                os.link(tmp, path)
        finally:
            tmp.unlink()
    try:
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"{path} does not hold a patient key (hex): restore it, or set CXR_PATIENT_KEY"
        ) from exc
    if len(key) < 16:
        raise ConfigurationError(f"{path} holds a key under 16 bytes: restore it")
    return key
