"""The decode limits: what a DICOM instance may declare and contain before anything
decodes it. Declared once, here: defaults, bounds and what each one means.

* :class:`DecodeLimitSettings` is the declaration. The settings of every process that
  reads instances (listener, worker, web) inherit it, so each limit is also an
  environment variable (``CXR_MAX_PIXELS``, ``CXR_MAX_HEADER_BYTES``, ...).
* :class:`DecodeLimits` is the same fields, frozen: the value ``cxr_imaging.limits``
  checks against (``DecodeLimits()`` holds the defaults).
* :meth:`DecodeLimitSettings.decode_limits` is the one conversion from settings.

Defaults fit projection radiography with room to spare: a 43 x 43 cm detector at 100 um is
4300 x 4300 (18.5 Mpx), a mammogram at 50 um about 4800 x 6000 (29 Mpx), a stitched
long-leg DX about 4300 x 12000. The worker's display pipeline (``cxr_imaging.decode``,
float64 intermediates) needs about 24 bytes per pixel on top of the stored pixels, so
``max_pixels`` = 64 Mpx keeps a decode under about 1.6 GiB.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MiB", "DecodeLimitSettings", "DecodeLimits"]

MiB: Final = 1024 * 1024


class DecodeLimitSettings(BaseModel):
    """The decode limits as settings (a mixin of the listener's, worker's and web's)."""

    max_pixels: int = Field(
        default=64_000_000, ge=1, description="Rows x Columns of one frame, pixels"
    )
    max_frames: int = Field(
        default=1,
        ge=1,
        description="NumberOfFrames. The CR, DX, SC and CT Image Storage IODs the listener "
        "accepts are single-frame, and the worker scores the first frame only",
    )
    max_inflated_bytes: int = Field(
        default=528 * MiB,
        ge=1,
        description="a Deflated data set's inflated length (default: the largest allowed "
        "pixels plus max_header_bytes)",
    )
    max_decoded_bytes: int = Field(
        default=512 * MiB,
        ge=1,
        description="Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated / 8: "
        "the native Pixel Data length any decoder must allocate",
    )
    max_rows: int = Field(default=12_000, ge=1, description="Rows of one frame, pixels")
    max_columns: int = Field(default=12_000, ge=1, description="Columns of one frame, pixels")
    max_header_bytes: int = Field(
        default=16 * MiB,
        ge=1,
        description="the data set's bytes before Pixel Data (inflated, when Deflated), all "
        "held in memory while the header is parsed. Real headers take kilobytes (a few MB "
        "with overlays or private blobs); the listener may parse one per association at "
        "once, so this bounds its extra memory at about associations x 3 x this",
    )
    max_header_items: int = Field(
        default=10_000,
        ge=1,
        description="sequence items in the header, at every nesting level (and fragments of "
        "encapsulated Pixel Data): counted in a pre-scan of the raw bytes before pydicom "
        "builds any object (each parsed item costs about 1 kB). Real headers hold tens",
    )
    max_header_elements: int = Field(
        default=100_000,
        ge=1,
        description="data elements in the header, at every nesting level (pre-scan, as "
        "max_header_items). Real headers hold hundreds to a few thousand",
    )
    max_sequence_depth: int = Field(
        default=16,
        ge=1,
        description="sequences nested in sequences (pre-scan). Images nest 2 or 3 deep; "
        "our own SR results about 6",
    )
    min_dynamic_range: float = Field(
        default=0.01,
        ge=0,
        lt=1,
        description="the decoded frame (float, 0 to 1) must span at least this between its "
        "0.5th and 99.5th percentiles, or it is blank or constant and not scored",
    )

    def decode_limits(self) -> DecodeLimits:
        """These settings' limits as the value the checks take."""
        return DecodeLimits(
            **{name: getattr(self, name) for name in DecodeLimitSettings.model_fields}
        )


class DecodeLimits(DecodeLimitSettings):
    """What an instance may declare and contain (the fields of
    :class:`DecodeLimitSettings`, frozen). ``DecodeLimits()`` holds the defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")
