#!/usr/bin/env bash
# Rewrite constraints.txt (exact versions) from .venv: run after changing dependencies in
# pyproject.toml, `pip install -e ".[dev]"` without -c, and a passing ./scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  cat <<'HEADER'
# Exact versions of every dependency (runtime, train and dev extras) for reproducible installs:
# scripts/install.sh and deploy/Dockerfile install with `pip install -c constraints.txt ...`.
# pyproject.toml keeps the ranges, with upper bounds where a major version breaks stored data.
# Regenerate with ./scripts/lock.sh (pip freeze --all --exclude-editable of .venv, sorted).
HEADER
  .venv/bin/python -m pip freeze --all --exclude-editable | LC_ALL=C sort -f
} >constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins"
