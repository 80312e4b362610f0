#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit, integration, end-to-end against
# real servers and processes, SQS/SSM against moto, a generated project built
# and served, generated inputs, doctests), then schemathesis against the
# translate example, then the Modal deployment tests. Installs what it
# needs first: moto into .venv-moto, modal into .venv-modal, modalkit 0.2.0
# (the differential test's oracle) into .venv-modalkit, schemathesis into
# .venv-schemathesis. The shared moto
# server is stopped by PID on exit; fault tests start and stop private ones.
# One `cargo test --workspace` builds everything the tests start (the test
# server, the examples' binaries, the `modalkit` command), so nothing is built
# twice with other features.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/moto.sh install
scripts/test-modal.sh install
scripts/modalkit-oracle.sh install
scripts/schemathesis.sh install
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
trap 'scripts/moto.sh stop' EXIT
scripts/moto.sh start "$port"
export MODALKIT_TEST_MOTO_ENDPOINT="http://127.0.0.1:$port"
export MODALKIT_TEST_MOTO_SERVER="$PWD/.venv-moto/bin/moto_server"
export MODALKIT_TEST_MODAL_PYTHON="$PWD/.venv-modal/bin/python"
export MODALKIT_TEST_ORACLE_PYTHON="$PWD/.venv-modalkit/bin/python"

rm -rf target/test-reports
cargo test --workspace --locked "$@"
# Figures some tests measure (e.g. the durable kill test), for the log.
cat target/test-reports/*.txt 2>/dev/null || true
scripts/schemathesis.sh
scripts/test-modal.sh
