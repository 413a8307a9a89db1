#!/usr/bin/env bash
# Install, then run the whole test suite (unit, integration, e2e). Real Postgres and Redis:
# the ones named by CXR_TEST_DATABASE_URL / CXR_TEST_BROKER_URL, else the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
./scripts/check.sh
exec .venv/bin/pytest "$@"
