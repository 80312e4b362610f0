#!/usr/bin/env bash
# The real modalkit 0.2.0 from PyPI, for the differential compatibility test
# (tests/tests/modalkit_compat.rs, via tests/oracle/modalkit_oracle.py).
#   scripts/modalkit-oracle.sh install    install into .venv-modalkit (idempotent)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-modalkit
MODALKIT_VERSION=0.2.0

case "${1:-}" in
  install)
    if ! "$venv/bin/python" -c "import modalkit.fast_api, fastapi.testclient, httpx" 2>/dev/null; then
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q --disable-pip-version-check "modalkit==$MODALKIT_VERSION"
    fi
    ;;
  *)
    echo "usage: scripts/modalkit-oracle.sh install" >&2; exit 2 ;;
esac
