"""The Secondary Capture's picture: the heatmap overlay (or the radiograph) and the text.

One heatmap rule: the picture is the heatmap overlay the worker stored with the prediction
(``predictions.heatmap_png``, drawn by :mod:`cxr_model.heatmaps`, already on a neutral grey
field when the source has burned-in text), so the colour map, the blending and the
burned-in rule are decided in one place and the results task never runs the model again.
Without a stored overlay (heatmaps switched off) the decoded radiograph is shown in grey,
or a neutral grey field when the source says its pixels carry burned-in annotation.

Resolution: the stored overlay is at most 512 px (the worker keeps it small), so for the
Secondary Capture the heatmap is read back out of it
(:func:`cxr_imaging.overlay.heat_from_overlay`), scaled up and drawn again, with the
same colouring rule, over the decoded radiograph at its own resolution
(:func:`overlay_at_source_resolution`), up to :data:`SC_MAX_SIDE` px on the
longer side (2048: a 43 x 35 cm film at 0.2 mm is about 2150 x 1750 px, so a chest film
keeps about its detector resolution; larger ones are scaled down, never up).

Layout, top to bottom: a dark band with "NOT FOR DIAGNOSTIC USE - clinical decision
support", the score against the threshold with the flag, and the model; the picture (longer
side at most ``max_side`` pixels); a band with the clinical-support statement and what the
heatmap means. Text goes in bands around the picture, never over the anatomy, and names the
model and the result only, never the patient. Pillow's bundled font is used, so no system
font is needed; it has no glyph for typographic dashes or other non-ASCII characters, so
the text is reduced to ASCII first (:func:`font_safe`: an en dash becomes "-").
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import cache

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from cxr_common.clinical import DISCLAIMER, heatmap_note
from cxr_imaging.overlay import blend, heat_from_overlay
from cxr_results.errors import ResultObjectError
from cxr_results.summary import ResultSummary, population_statement

__all__ = [
    "SC_MAX_SIDE",
    "NEUTRAL_FIELD_NOTE",
    "NOT_FOR_DIAGNOSTIC_USE",
    "NO_HEATMAP_NOTE",
    "font_safe",
    "overlay_at_source_resolution",
    "overlay_from_png",
    "render_result_image",
    "result_text",
]

UInt8Array = npt.NDArray[np.uint8]

NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
NO_HEATMAP_NOTE = "No heatmap was stored for this image."
NEUTRAL_FIELD_NOTE = (
    "The source image has burned-in text: the heatmap is shown on a neutral grey field."
)
#: The grey shown instead of the pixels of a source with burned-in text (no heatmap case).
NEUTRAL_GREY = 0.5
#: The Secondary Capture's picture is at most this many pixels on its longer side.
SC_MAX_SIDE = 2048

_ASCII = str.maketrans(
    {
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2026": "...",
        "\u2264": "<=",
        "\u2265": ">=",
        "\u00b1": "+/-",
        "\u00d7": "x",
        "\u00a0": " ",
    }
)


def font_safe(text: str) -> str:
    """``text`` in printable ASCII, which the bundled font draws: typographic dashes and
    quotes become their ASCII forms, anything else without a glyph becomes "?"."""
    plain = text.translate(_ASCII)
    return "".join(c if " " <= c <= "~" else "?" for c in plain)


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` px (no system font needed)."""
    return ImageFont.load_default(size=size)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in font_safe(text).split():
        candidate = f"{current} {word}".strip()
        if current and font.getlength(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def _text_band(
    width: int, lines: Sequence[tuple[str, tuple[int, int, int]]], size: int
) -> Image.Image:
    """A dark band with ``lines`` (text, colour) wrapped to ``width``."""
    font = _font(size)
    margin = max(6, size // 2)
    wrapped: list[tuple[str, tuple[int, int, int]]] = [
        (part, colour) for text, colour in lines for part in _wrap(text, font, width - 2 * margin)
    ]
    line_h = round(size * 1.3)
    band = Image.new("RGB", (width, 2 * margin + line_h * len(wrapped)), (16, 16, 16))
    draw = ImageDraw.Draw(band)
    for i, (text, colour) in enumerate(wrapped):
        draw.text((margin, margin + i * line_h), font_safe(text), fill=colour, font=font)
    return band


def overlay_from_png(png: bytes) -> UInt8Array:
    """The stored heatmap overlay PNG as RGB pixels (H x W x 3, uint8)."""
    try:
        with Image.open(io.BytesIO(png)) as image:
            image.load()
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ResultObjectError(f"the stored heatmap overlay is not a readable PNG: {exc}") from exc
    return np.asarray(rgb, dtype=np.uint8).copy()


def overlay_at_source_resolution(
    pixels01: npt.NDArray[np.generic],
    overlay: UInt8Array,
    *,
    neutral_field: bool,
    max_side: int = SC_MAX_SIDE,
) -> UInt8Array:
    """The heatmap of the stored ``overlay`` drawn again over the decoded radiograph
    ``pixels01`` (2-D float in [0, 1]) at the radiograph's resolution (longer side at most
    ``max_side``), by the worker's colouring rule; over a neutral grey field of that size
    when ``neutral_field`` (the source may carry burned-in text)."""
    grey = np.clip(np.nan_to_num(np.asarray(pixels01, dtype=np.float32)), 0.0, 1.0)
    if grey.ndim != 2 or not grey.size:
        raise ResultObjectError(f"expected a 2-D radiograph, got shape {grey.shape}")
    heat = heat_from_overlay(np.asarray(overlay, dtype=np.uint8))
    rows, columns = grey.shape
    scale = min(1.0, max_side / max(rows, columns))
    size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    if neutral_field:
        base = np.full((size[1], size[0]), NEUTRAL_GREY * 255.0, dtype=np.float32)
    else:
        image = Image.fromarray((grey * 255.0 + 0.5).astype(np.uint8), mode="L")
        base = np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    heat_image = Image.fromarray(heat, mode="F").resize(size, Image.Resampling.BILINEAR)
    shown = np.clip(np.asarray(heat_image, dtype=np.float32), 0.0, 1.0)
    rgb = np.repeat(base[..., None], 3, axis=2)
    return blend(rgb, shown)


def _picture(
    picture: npt.NDArray[np.generic], neutral_field: bool, max_side: int
) -> tuple[Image.Image, bool]:
    """(the picture as RGB, scaled so its longer side is at most ``max_side``; whether it
    is a heatmap overlay)."""
    array = np.asarray(picture)
    if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8 and array.size:
        image = Image.fromarray(array, mode="RGB")
        is_overlay = True
    elif array.ndim == 2 and array.size and np.issubdtype(array.dtype, np.floating):
        grey = np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0)
        if neutral_field:
            grey = np.full_like(grey, NEUTRAL_GREY)
        image = Image.fromarray((grey * 255.0 + 0.5).astype(np.uint8), mode="L").convert("RGB")
        is_overlay = False
    else:
        raise ResultObjectError(
            "expected a heatmap overlay (H x W x 3, uint8) or a 2-D greyscale image in [0, 1], "
            f"got shape {array.shape} of {array.dtype}"
        )
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    return image, is_overlay


Line = tuple[str, tuple[int, int, int]]
_AMBER = (255, 220, 0)
_GREY = (200, 200, 200)
_FLAG = (255, 120, 60)


def result_text(
    result: ResultSummary, *, neutral_field: bool = False, overlay: bool = True
) -> tuple[list[Line], list[Line]]:
    """The (header, footer) lines of the Secondary Capture: (text, colour) each.

    A shadow score (``result.triage`` False: outside the validated population) is headed
    "OUTSIDE VALIDATED POPULATION: score not used for triage" with the reason, and shown as
    a shadow score, never as flagged or not flagged."""
    header: list[Line] = [(f"{NOT_FOR_DIAGNOSTIC_USE} - clinical decision support", _AMBER)]
    statement = population_statement(result)
    if statement is None:
        flag_text = "FLAGGED for priority reading" if result.flagged else "not flagged"
        header.append(
            (
                f"{result.finding.display} score {result.score:.3f} "
                f"(threshold {result.threshold:.3f}): {flag_text}",
                _FLAG if result.flagged else _GREY,
            )
        )
    else:
        header += [
            (statement, _AMBER),
            (
                f"{result.finding.display} shadow score {result.score:.3f} "
                f"(threshold {result.threshold:.3f}): not a triage result; read normally",
                _GREY,
            ),
        ]
    header.append((f"Model {result.model_name} {result.model_version}", _GREY))
    if neutral_field:
        header.append((NEUTRAL_FIELD_NOTE, _GREY))
    footer: list[Line] = [
        (DISCLAIMER, _AMBER),
        (heatmap_note(result.finding.display) if overlay else NO_HEATMAP_NOTE, _GREY),
    ]
    if result.population_note:
        footer.append((result.population_note, _GREY))
    return header, footer


def render_result_image(
    picture: npt.NDArray[np.generic],
    result: ResultSummary,
    *,
    neutral_field: bool = False,
    max_side: int = SC_MAX_SIDE,
) -> UInt8Array:
    """The Secondary Capture's RGB pixels (H x W x 3, uint8).

    ``picture`` is the stored heatmap overlay (:func:`overlay_from_png`; H x W x 3 uint8)
    or, without one, the decoded radiograph (2-D float in [0, 1], MONOCHROME2).
    ``neutral_field`` says the source has burned-in text: an overlay was already drawn on a
    neutral field by the worker (a note says so); a greyscale radiograph is replaced by
    mid grey here. The text names the model and the result only."""
    image, is_overlay = _picture(picture, neutral_field, max_side)
    width = image.size[0]
    text_size = max(14, round(width / 42))
    header_lines, footer_lines = result_text(
        result, neutral_field=neutral_field, overlay=is_overlay
    )
    parts = [
        _text_band(width, header_lines, text_size),
        image,
        _text_band(width, footer_lines, round(text_size * 0.8)),
    ]
    canvas = Image.new("RGB", (width, sum(p.height for p in parts)), (16, 16, 16))
    y = 0
    for part in parts:
        canvas.paste(part, (0, y))
        y += part.height
    return np.asarray(canvas, dtype=np.uint8).copy()
