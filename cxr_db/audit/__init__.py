"""Audit: the append-only audit log (tables, store)."""
