"""Instances: studies, instances and predictions (tables, statuses, writes, reads, stats)."""
