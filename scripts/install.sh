#!/usr/bin/env bash
# Create .venv (if missing) and install cxr-triage with the train extra and dev tools into it,
# at the versions pinned in constraints.txt (the same pins as deploy/Dockerfile).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
