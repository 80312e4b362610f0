#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit, integration, end-to-end against
# real servers and processes, SQS/SSM against moto, doctests), then the Modal
# deployment tests. Installs what it needs: moto into .venv-moto, modal into
# .venv-modal. The shared moto server is stopped by PID on exit; fault tests
# start and stop private ones.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/moto.sh install
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
trap 'scripts/moto.sh stop' EXIT
scripts/moto.sh start "$port"
export MODALKIT_TEST_MOTO_ENDPOINT="http://127.0.0.1:$port"
export MODALKIT_TEST_MOTO_SERVER="$PWD/.venv-moto/bin/moto_server"

cargo test --workspace --locked "$@"
scripts/test-modal.sh
