#!/usr/bin/env bash
# Python clients the tests drive, from PyPI, in .venv-modalkit: the real
# modalkit 0.2.0 for the differential compatibility test
# (tests/tests/modalkit_compat.rs, via tests/oracle/modalkit_oracle.py), and
# the real `openai` package for the OpenAI-compatible embeddings test, and
# huggingface_hub's InferenceClient and the `cohere` SDK for the TEI and
# rerank routes (tests/tests/bert_family.rs, via tests/clients/).
#   scripts/modalkit-oracle.sh install    install into .venv-modalkit (idempotent)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-modalkit
MODALKIT_VERSION=0.2.0
OPENAI_VERSION=3.57.0
HF_HUB_VERSION=2.4.0
COHERE_VERSION=7.3.1
# InferenceClient.feature_extraction returns numpy arrays (2.4: the last for Python 3.11).
NUMPY_VERSION=2.4.6

case "${1:-}" in
  install)
    if ! "$venv/bin/python" -c "import modalkit.fast_api, fastapi.testclient, httpx, openai, huggingface_hub, cohere, numpy" 2>/dev/null; then
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q --disable-pip-version-check "modalkit==$MODALKIT_VERSION" "openai==$OPENAI_VERSION" \
        "huggingface_hub==$HF_HUB_VERSION" "cohere==$COHERE_VERSION" "numpy==$NUMPY_VERSION"
    fi
    ;;
  *)
    echo "usage: scripts/modalkit-oracle.sh install" >&2; exit 2 ;;
esac
