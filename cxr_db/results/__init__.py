"""Results back to PACS: result states, send attempts (states, tables, store)."""
