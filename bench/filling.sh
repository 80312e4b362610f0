#!/usr/bin/env bash
# Load-aware filling, A/B: the embeddings server (config/embeddings.yaml) at
# concurrency 8 with batch_config.adaptive_wait_ms 0 (off) and 1 (the
# default), alternating, for each ISA path this CPU has. Prints requests/s
# and the mean batch size (from /metrics) over each run; writes the table
# to bench/out/filling.md.
#
# Usage: bench/filling.sh    (DURATION=10 seconds per run, ROUNDS=2)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
PORT=8301
OUT=bench/out
mkdir -p "$OUT"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
scripts/fetch-model.sh
cargo build --release --locked -q -p modalkit-examples --bin embeddings
ISAS=""
grep -qw avx512f /proc/cpuinfo && ISAS="avx512"
grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo && ISAS="$ISAS avx2"

lua=$(mktemp --suffix=.lua)
cat > "$lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"text": "The quick brown fox jumps over the lazy dog near the river"}'
wrk.headers["Content-Type"] = "application/json"
LUA
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; true' EXIT

batch_totals() { curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^modalkit_batch_size_(sum|count)/ {print $2}' | paste -sd' '; }

{
  echo "| round | ISA | adaptive_wait_ms | requests/s | mean batch |"
  echo "|---|---|---|---|---|"
  for round in $(seq 1 "$ROUNDS"); do
    for isa in $ISAS; do
      for wait in 0 1; do
        MODALKIT_APP_SETTINGS__BATCH_CONFIG__ADAPTIVE_WAIT_MS=$wait MODALKIT_CPU_ISA=$isa RUST_LOG=warn \
          target/release/embeddings --config config/embeddings.yaml --host 127.0.0.1 --port "$PORT" & pid=$!
        for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.1; done
        wrk -t1 -c8 -d3s -s "$lua" "http://127.0.0.1:$PORT/predict_sync" >/dev/null
        before=$(batch_totals)
        rps=$(wrk -t1 -c8 -d"${DURATION}s" -s "$lua" "http://127.0.0.1:$PORT/predict_sync" | awk '/Requests\/sec/ {print $2}')
        after=$(batch_totals)
        mean=$(echo "$before $after" | awk '{ printf "%.2f", ($3 - $1) / ($4 - $2) }')
        echo "| $round | $isa | $wait | $rps | $mean |"
        kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
      done
    done
  done
} | tee "$OUT/filling.md"
echo "machine: $(bench/machine.sh); c=8, ${DURATION}s per run, wrk -t1" | tee -a "$OUT/filling.md"
