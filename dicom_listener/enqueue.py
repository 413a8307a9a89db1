"""Enqueue the scoring job of a committed instance (the reconciler's import; the rule
lives in :mod:`cxr_ingest.enqueue`)."""

from __future__ import annotations

from cxr_ingest.enqueue import enqueue_instance

__all__ = ["enqueue_instance"]
