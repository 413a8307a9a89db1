"""Conflicts: a SOP Instance UID received again with other content (tables, store)."""
