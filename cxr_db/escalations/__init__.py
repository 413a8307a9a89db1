"""Escalation of flagged studies left unread: the decisions and their webhook outbox."""
