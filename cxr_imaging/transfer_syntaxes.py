"""The transfer syntaxes :mod:`cxr_imaging` can decode, and what to install for the rest.

One table: every compressed transfer syntax pydicom has a pixel decoder for, in the
listener's order of preference, with the plugin that decodes it. The listener accepts what
:func:`decodable_transfer_syntaxes` returns, so the worker can decode whatever was
acknowledged; :func:`plugin_hint` names the package in an undecodable-pixels message.
"""

from __future__ import annotations

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

__all__ = ["COMPRESSED", "UNCOMPRESSED", "decodable_transfer_syntaxes", "plugin_hint"]

#: Native (uncompressed) encodings: numpy alone decodes them.
UNCOMPRESSED: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

#: Compressed transfer syntax → the package that lets pydicom decode it (in this order of
#: preference when a sender proposes several).
COMPRESSED: dict[UID, str] = {
    JPEGBaseline8Bit: "pylibjpeg-libjpeg (or Pillow / python-gdcm)",
    JPEGExtended12Bit: "pylibjpeg-libjpeg (or python-gdcm)",
    JPEGLossless: "pylibjpeg-libjpeg (or python-gdcm)",
    JPEGLosslessSV1: "pylibjpeg-libjpeg (or python-gdcm)",
    JPEGLSLossless: "pylibjpeg-libjpeg or pyjpegls",
    JPEGLSNearLossless: "pylibjpeg-libjpeg or pyjpegls",
    JPEG2000Lossless: "pylibjpeg-openjpeg (or Pillow / python-gdcm)",
    JPEG2000: "pylibjpeg-openjpeg (or Pillow / python-gdcm)",
    HTJ2KLossless: "pylibjpeg-openjpeg",
    HTJ2KLosslessRPCL: "pylibjpeg-openjpeg",
    HTJ2K: "pylibjpeg-openjpeg",
    RLELossless: "pylibjpeg-rle (or numpy only: pydicom's own RLE decoder)",
}


def plugin_hint(transfer_syntax_uid: str | None) -> str:
    """Name the package that decodes ``transfer_syntax_uid`` (for error messages)."""
    if not transfer_syntax_uid:
        return "a valid File Meta (0002,0010) Transfer Syntax UID"
    return COMPRESSED.get(
        UID(str(transfer_syntax_uid)), "python-gdcm (no pylibjpeg plugin is known for it)"
    )


def decodable_transfer_syntaxes() -> list[UID]:
    """Transfer syntaxes that can be decoded here, in order of preference: every compressed
    one an installed pydicom pixel decoder (pylibjpeg, Pillow, ...) can decode, then the
    uncompressed ones.

    The listener offers exactly these; pynetdicom picks the first of them that a requested
    context also proposes. Compressed comes first because a sender proposes a compressed
    syntax when it holds the image that way (DCMTK's storescu proposes [own, explicit LE,
    implicit LE] in one context): taking it as it is avoids transcoding at the sender,
    which may not be able to decompress."""
    from pydicom.pixels.decoders.base import get_decoder

    accepted: list[UID] = []
    for uid in COMPRESSED:
        try:
            if get_decoder(uid).is_available:
                accepted.append(uid)
        except NotImplementedError:
            continue
    return accepted + list(UNCOMPRESSED)
