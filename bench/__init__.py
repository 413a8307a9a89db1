"""Benchmarks: one command each, ``python -m bench.run_all`` for all (see BENCHMARKS.md).

Each prints a small table and writes JSON (``--out``); inputs are generated from the
committed samples, so they run on a fresh machine. Speed is never asserted anywhere.
"""
