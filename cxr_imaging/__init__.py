"""Shared imaging: DICOM/JPEG decoding, the transfer syntaxes it decodes, and
chest-radiograph eligibility.

Imports no other project package (and no torch, database or queue code), so the
listener, the worker and training all share it.
"""

from cxr_imaging.decode import DecodedImage, decode_dataset, load_image
from cxr_imaging.eligibility import Eligibility, check_eligibility, is_chest_radiograph
from cxr_imaging.errors import ImagingError, NotAnImageError, UndecodableError
from cxr_imaging.transfer_syntaxes import decodable_transfer_syntaxes

__all__ = [
    "DecodedImage",
    "Eligibility",
    "ImagingError",
    "NotAnImageError",
    "UndecodableError",
    "check_eligibility",
    "decodable_transfer_syntaxes",
    "decode_dataset",
    "is_chest_radiograph",
    "load_image",
]
