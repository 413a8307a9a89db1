"""Accounts: users, sign-in, browser sessions and API tokens (tables, store)."""
