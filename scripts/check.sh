#!/usr/bin/env bash
# Lint, format check, type check (mypy --strict on every runtime package) and import contracts.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports
