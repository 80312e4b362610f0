#!/usr/bin/env bash
# Python clients the tests drive, from PyPI, in .venv-modalkit: the real
# modalkit 0.2.0 for the differential compatibility test
# (tests/tests/modalkit_compat.rs, via tests/oracle/modalkit_oracle.py), and
# the real `openai` package for the OpenAI-compatible embeddings test.
#   scripts/modalkit-oracle.sh install    install into .venv-modalkit (idempotent)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-modalkit
MODALKIT_VERSION=0.2.0
OPENAI_VERSION=3.57.0

case "${1:-}" in
  install)
    if ! "$venv/bin/python" -c "import modalkit.fast_api, fastapi.testclient, httpx, openai" 2>/dev/null; then
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q --disable-pip-version-check "modalkit==$MODALKIT_VERSION" "openai==$OPENAI_VERSION"
    fi
    ;;
  *)
    echo "usage: scripts/modalkit-oracle.sh install" >&2; exit 2 ;;
esac
