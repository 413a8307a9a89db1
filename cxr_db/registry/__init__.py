"""The model registry and the enabled population strata (tables, store)."""
