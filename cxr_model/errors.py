"""Errors raised by the model package.

Hierarchy::

    ModelError
    ├── ModelIntegrityError      weights file missing or its sha256 differs from model.json
    ├── ContractError            model.json / calibration.json malformed or unsupported
    └── CalibrationMismatchError calibration record fitted for another model (sha256 differs)
"""

from __future__ import annotations

from cxr_common.errors import CxrTriageError


class ModelError(CxrTriageError):
    """Root of every error raised by :mod:`cxr_model`."""


class ModelIntegrityError(ModelError):
    """The weights file is missing or does not match its recorded sha256."""


class ContractError(ModelError):
    """A contract or calibration file is malformed or names something unsupported."""


class CalibrationMismatchError(ModelError):
    """The calibration record belongs to a different model (sha256 mismatch)."""
