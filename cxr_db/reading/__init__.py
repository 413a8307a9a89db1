"""Reading: read state and answers (tables, store)."""
