"""Durations as people read them: ``45 s``, ``12 min``, ``2.5 h``, ``3.1 d``."""

from __future__ import annotations


def duration_text(seconds: float | None) -> str:
    """``seconds`` in the largest unit that keeps it readable; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def share_text(share: float | None) -> str:
    """A share as a percentage; ``-`` when nothing counts yet."""
    return "-" if share is None else f"{share:.0%}"
