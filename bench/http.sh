#!/usr/bin/env bash
# HTTP benchmark on loopback, in one go: a bare axum handler returning a
# constant JSON (the ceiling), then the modalkit-rs server with a no-op
# pipeline, then the same server with tracing on (every request sampled,
# exported over OTLP/HTTP to the ceiling process, which answers 200 unread),
# and with 10% of traces sampled (OTEL_TRACES_SAMPLER=traceidratio), each at
# concurrency 1 and 64. Prints requests/s, p50, p99 and the ratio to
# the ceiling; writes the table to bench/out/http.md. The host's speed
# drifts, so each case runs ROUNDS times, interleaved with the others, and
# reports its median round.
#
# Usage: bench/http.sh            (DURATION=10 seconds per run, ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CEILING_PORT=8100
SERVER_PORT=8101
TRACED_PORT=8102
SAMPLED_PORT=8103
OUT=bench/out
mkdir -p "$OUT"

if ! command -v wrk >/dev/null; then
  echo "installing wrk" >&2
  apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
fi

cargo build --release --locked -q -p modalkit-examples --bin noop --bin http-ceiling

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

target/release/http-ceiling "$CEILING_PORT" & pids+=($!)
RUST_LOG=warn target/release/noop --config config/noop.yaml --host 127.0.0.1 --port "$SERVER_PORT" & pids+=($!)
OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$CEILING_PORT" RUST_LOG=warn \
  target/release/noop --config config/noop.yaml --host 127.0.0.1 --port "$TRACED_PORT" & pids+=($!)
OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$CEILING_PORT" OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0.1 \
  RUST_LOG=warn target/release/noop --config config/noop.yaml --host 127.0.0.1 --port "$SAMPLED_PORT" & pids+=($!)

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2; exit 1
}
wait_port "$CEILING_PORT"; wait_port "$SERVER_PORT"; wait_port "$TRACED_PORT"; wait_port "$SAMPLED_PORT"

lua=$(mktemp --suffix=.lua)
cat > "$lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"value": 1}'
wrk.headers["Content-Type"] = "application/json"
LUA

# run PORT CONCURRENCY -> "rps p50_ms p99_ms"
run() {
  local out
  out=$(wrk -t1 -c"$2" -d"${DURATION}s" --latency -s "$lua" "http://127.0.0.1:$1/predict_sync")
  if echo "$out" | grep -q "Non-2xx"; then echo "non-2xx responses:" >&2; echo "$out" >&2; exit 1; fi
  local rps p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}
to_ms() { # wrk prints 1.23us / 4.56ms / 1.2s
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

# Warm both up.
wrk -t1 -c8 -d2s -s "$lua" "http://127.0.0.1:$CEILING_PORT/predict_sync" >/dev/null
wrk -t1 -c8 -d2s -s "$lua" "http://127.0.0.1:$SERVER_PORT/predict_sync" >/dev/null
wrk -t1 -c8 -d2s -s "$lua" "http://127.0.0.1:$TRACED_PORT/predict_sync" >/dev/null
wrk -t1 -c8 -d2s -s "$lua" "http://127.0.0.1:$SAMPLED_PORT/predict_sync" >/dev/null

{
  echo "| case | concurrency | requests/s | p50 ms | p99 ms | vs ceiling |"
  echo "|---|---|---|---|---|---|"
  for c in 1 64; do
    # Rounds interleave the four cases, so a drift in the host's speed
    # touches them all alike; each case reports its median round.
    results=$(mktemp -d)
    for _ in $(seq 1 "$ROUNDS"); do
      for port in "$CEILING_PORT" "$SERVER_PORT" "$TRACED_PORT" "$SAMPLED_PORT"; do
        run "$port" "$c" >> "$results/$port"
      done
    done
    median() { sort -n "$results/$1" | awk '{ row[NR] = $0 } END { print row[int((NR + 1) / 2)] }'; }
    read -r c_rps c_p50 c_p99 < <(median "$CEILING_PORT")
    read -r s_rps s_p50 s_p99 < <(median "$SERVER_PORT")
    read -r t_rps t_p50 t_p99 < <(median "$TRACED_PORT")
    read -r r_rps r_p50 r_p99 < <(median "$SAMPLED_PORT")
    rm -r "$results"
    ratio() { awk -v a="$1" -v b="$c_rps" 'BEGIN { printf "%.0f%%", 100 * a / b }'; }
    echo "| bare axum (ceiling) | $c | $c_rps | $c_p50 | $c_p99 | 100% |"
    echo "| modalkit-rs, no-op pipeline | $c | $s_rps | $s_p50 | $s_p99 | $(ratio "$s_rps") |"
    echo "| modalkit-rs, no-op pipeline, traced | $c | $t_rps | $t_p50 | $t_p99 | $(ratio "$t_rps") |"
    echo "| modalkit-rs, no-op pipeline, traced, 10% sampled | $c | $r_rps | $r_p50 | $r_p99 | $(ratio "$r_rps") |"
  done
} | tee "$OUT/http.md"
echo "machine: $(bench/machine.sh); ${DURATION}s per run, median of $ROUNDS interleaved rounds, wrk -t1" | tee -a "$OUT/http.md"
