"""The Secondary Capture's picture: the radiograph, the heatmap and the burned-in text.

Layout, top to bottom: a dark band with "NOT FOR DIAGNOSTIC USE - clinical decision
support", the score against the threshold with the flag, and the model; the radiograph
(longer side ``max_side`` pixels) with the heatmap blended on top (the web page's colour map
and blending: alpha 0.55 x heat, so cold regions stay untinted); a "heatmap: low ... high"
legend; a band with the clinical-support statement and what the heatmap means. Text goes
in bands around the image, never over the anatomy, and names the model and the result only,
never the patient. Pillow's bundled font is used, so no system font is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from cxr_common.clinical import DISCLAIMER
from cxr_results.errors import ResultObjectError
from cxr_results.summary import ResultSummary

__all__ = ["HEATMAP_NOTE", "NEUTRAL_FIELD_NOTE", "NOT_FOR_DIAGNOSTIC_USE", "render_result_image"]

UInt8Array = npt.NDArray[np.uint8]

NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
HEATMAP_NOTE = (
    "Heatmap (Grad-CAM): image regions that most influenced the score, not a lesion outline."
)
NEUTRAL_FIELD_NOTE = (
    "The source image has burned-in text: the heatmap is shown on a neutral grey field."
)


def _jet(v: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The web page's jet-like colour map: v in [0, 1] -> RGB in [0, 255] (float)."""
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return np.stack([r, g, b], axis=-1).astype(np.float32) * 255.0


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` px (no system font needed)."""
    return ImageFont.load_default(size=size)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
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
        draw.text((margin, margin + i * line_h), text, fill=colour, font=font)
    return band


def _colour_bar(width: int, size: int) -> Image.Image:
    """A 'heatmap: low ... high' legend band."""
    font = _font(size)
    margin = max(6, size // 2)
    band = Image.new("RGB", (width, size + 2 * margin), (16, 16, 16))
    draw = ImageDraw.Draw(band)
    low, high = "heatmap: low", "high"
    x0 = margin + round(font.getlength(low)) + margin
    x1 = width - margin - round(font.getlength(high)) - margin
    draw.text((margin, margin), low, fill=(220, 220, 220), font=font)
    draw.text((x1 + margin, margin), high, fill=(220, 220, 220), font=font)
    if x1 > x0:
        ramp = _jet(np.linspace(0.0, 1.0, x1 - x0, dtype=np.float32)).astype(np.uint8)
        bar = np.repeat(ramp[None, :, :], size, axis=0)
        band.paste(Image.fromarray(bar, mode="RGB"), (x0, margin))
    return band


def render_result_image(
    grey: npt.NDArray[np.floating],
    heatmap: npt.NDArray[np.floating] | None,
    result: ResultSummary,
    *,
    neutral_field: bool = False,
    max_side: int = 1024,
) -> UInt8Array:
    """The Secondary Capture's RGB pixels (H x W x 3, uint8).

    ``grey`` is the decoded radiograph (float, [0, 1], MONOCHROME2), ``heatmap`` any size in
    [0, 1] (resized to the image). With ``neutral_field`` the radiograph is replaced by mid
    grey before the heatmap is drawn. The text names the model and the result only."""
    pixels = np.asarray(grey, dtype=np.float32)
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise ResultObjectError(f"expected a 2-D greyscale image, got shape {pixels.shape}")
    if neutral_field:
        pixels = np.full_like(pixels, 0.5)
    pixels = np.clip(np.nan_to_num(pixels), 0.0, 1.0)
    rows, cols = pixels.shape
    scale = max_side / max(rows, cols)
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    image = Image.fromarray((pixels * 255.0 + 0.5).astype(np.uint8), mode="L")
    base = np.asarray(image.resize(size, Image.Resampling.BILINEAR).convert("RGB"), np.float32)
    if heatmap is not None:
        heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
        if heat.ndim != 2:
            raise ResultObjectError(f"expected a 2-D heatmap, got shape {heat.shape}")
        heat_img = Image.fromarray((heat * 255.0 + 0.5).astype(np.uint8), mode="L")
        heat01 = np.asarray(heat_img.resize(size, Image.Resampling.BILINEAR), np.float32) / 255.0
        alpha = (0.55 * heat01)[..., None]
        base = base * (1.0 - alpha) + _jet(heat01) * alpha
    picture = Image.fromarray(np.clip(base + 0.5, 0, 255).astype(np.uint8), mode="RGB")

    width = size[0]
    text_size = max(14, round(width / 42))
    flag_text = "FLAGGED for priority reading" if result.flagged else "not flagged"
    flag_colour = (255, 120, 60) if result.flagged else (200, 200, 200)
    header_lines: list[tuple[str, tuple[int, int, int]]] = [
        (f"{NOT_FOR_DIAGNOSTIC_USE} - clinical decision support", (255, 220, 0)),
        (
            f"{result.finding.capitalize()} score {result.score:.3f} "
            f"(threshold {result.threshold:.3f}): {flag_text}",
            flag_colour,
        ),
        (f"Model {result.model_name} {result.model_version}", (200, 200, 200)),
    ]
    if neutral_field:
        header_lines.append((NEUTRAL_FIELD_NOTE, (200, 200, 200)))
    footer_lines: list[tuple[str, tuple[int, int, int]]] = [
        (DISCLAIMER, (255, 220, 0)),
        (HEATMAP_NOTE, (200, 200, 200)),
    ]
    if result.population_note:
        footer_lines.append((result.population_note, (200, 200, 200)))
    parts = [_text_band(width, header_lines, text_size), picture]
    if heatmap is not None:
        parts.append(_colour_bar(width, round(text_size * 0.8)))
    parts.append(_text_band(width, footer_lines, round(text_size * 0.8)))
    canvas = Image.new("RGB", (width, sum(p.height for p in parts)), (16, 16, 16))
    y = 0
    for part in parts:
        canvas.paste(part, (0, y))
        y += part.height
    return np.asarray(canvas, dtype=np.uint8).copy()
