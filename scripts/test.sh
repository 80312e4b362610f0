#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit, integration, end-to-end against
# real servers and processes, doctests), then the Modal deployment tests
# (which install their Python packages into .venv-modal).
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked "$@"
scripts/test-modal.sh
