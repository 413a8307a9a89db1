#!/usr/bin/env bash
# Dependency audit (issue 12). Runs pip-audit against a vulnerability database when one
# is reachable (PyPI's JSON API with its advisories, or OSV); otherwise prints the pinned
# versions to check by hand against SECURITY-DEPENDENCIES.md (exit 3: NOT AUDITED).
# Exit 1 when pip-audit reports a vulnerability or cannot audit a dependency (--strict).
#
#   scripts/audit_deps.sh            # the environment in .venv (or $VENV)
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"

reachable() {  # $1 = URL [$2 = POST body]; true when it answers with vulnerability data
  "$PY" - "$@" <<'PY' >/dev/null 2>&1
import json, sys, urllib.request
body = sys.argv[2].encode() if len(sys.argv) > 2 else None
data = json.load(urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=body), timeout=10))
# A mirror may answer the JSON API without the advisories (no per-version page, no
# "vulnerabilities" key): that is no database.
assert "vulnerabilities" in data or "vulns" in data or data == {}
PY
}

pinned() {
  if [[ -f constraints.txt ]]; then
    echo "pinned versions (constraints.txt):"
    cat constraints.txt
  else
    echo "installed versions (pip freeze of $VENV):"
    "$PY" -m pip freeze --all
  fi
}

if ! "$PY" -m pip_audit --version >/dev/null 2>&1; then
  echo "pip-audit is not installed in $VENV: pip install pip-audit" >&2
  pinned
  exit 2
fi

if reachable "https://pypi.org/pypi/pip/24.0/json"; then
  exec "$PY" -m pip_audit --strict --progress-spinner off --desc
elif reachable "https://api.osv.dev/v1/query" '{"package":{"name":"pip","ecosystem":"PyPI"},"version":"24.0"}'; then
  exec "$PY" -m pip_audit --strict --progress-spinner off --desc --vulnerability-service osv
fi
echo "no vulnerability database reachable (pypi.org JSON API, api.osv.dev): NOT AUDITED." >&2
echo "Check these against SECURITY-DEPENDENCIES.md and the advisories it lists." >&2
pinned
exit 3
