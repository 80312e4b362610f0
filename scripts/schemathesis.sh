#!/usr/bin/env bash
# Schema-driven fuzzing of the HTTP API: schemathesis (pinned, in
# .venv-schemathesis) generates requests from the server's own
# /openapi.json, positive and negative, and runs every check
# (`--checks all`: no server error, status codes and content types the
# document declares, bodies matching its schemas, ...) against the
# translate example (modalkit's README pipeline, built by `cargo test
# --workspace`) on the default config. Any failure fails the run; the
# summary goes to the CI log. A fixed seed: the same cases every run.
# Usage: scripts/schemathesis.sh [install]   (MAX_EXAMPLES=50 per operation)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-schemathesis
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check schemathesis==4.32.5
fi
[ "${1:-}" = install ] && exit 0

target_dir=${CARGO_TARGET_DIR:-$PWD/target}
binary="$target_dir/debug/translate"
[ -x "$binary" ] || cargo build --locked -q -p modalkit-examples --bin translate
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
RUST_LOG=warn "$binary" --config config/modalkit.yaml --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 200); do
  curl -sf "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
  sleep 0.05
done

# NO_COLOR: a plain summary in CI's log.
NO_COLOR=1 "$venv/bin/schemathesis" --config-file scripts/schemathesis/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
  --checks all --max-examples "${MAX_EXAMPLES:-50}" --seed 20261206 \
  --request-timeout 10 --suppress-health-check all --generation-database none \
  || { echo "schemathesis: failures above; server log:" >&2; cat "$log" >&2; exit 1; }
