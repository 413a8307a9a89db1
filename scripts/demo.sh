#!/usr/bin/env bash
# Install, then run the whole pipeline on the bundled samples (embedded Postgres + Redis
# unless CXR_DATABASE_URL / CXR_BROKER_URL are set).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
exec .venv/bin/cxr-triage demo "$@"
