"""Shared runtime plumbing for every cxr-triage process: settings, errors, logging, storage.

It imports no other project package, so the listener, the worker and the CLI can all
depend on it without depending on each other.
"""
