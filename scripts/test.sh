#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration, end-to-end (real
# servers over real HTTP, real signals to real processes) and doctests.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked "$@"
