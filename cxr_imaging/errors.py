"""Errors raised by :mod:`cxr_imaging`.

Hierarchy::

    ImagingError                 root: anything this package refuses to turn into pixels
    ├── NotAnImageError          the input holds no image (DICOM without PixelData,
    │                            or bytes that are neither DICOM nor a Pillow image)
    └── UndecodableError         the pixel data exists but cannot be decoded (missing
                                 plugin for the transfer syntax, corrupt stream,
                                 unsupported photometric interpretation)

Messages name transfer syntaxes, SOP Instance UIDs and plugins only, never patient data.
"""

from __future__ import annotations

from cxr_common.errors import CxrTriageError

__all__ = ["ImagingError", "NotAnImageError", "UndecodableError"]


class ImagingError(CxrTriageError):
    """Root of every error raised by :mod:`cxr_imaging`."""


class NotAnImageError(ImagingError):
    """The input holds no pixel data (or is not an image format we know)."""


class UndecodableError(ImagingError):
    """Pixel data is present but cannot be decoded into an image."""
