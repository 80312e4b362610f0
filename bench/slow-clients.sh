#!/usr/bin/env bash
# Normal clients' latency while hostile connections crowd the server, as a
# ratio to their latency without them, in one run: wrk at concurrency 8 on
# /predict_sync of the no-op pipeline (config/noop.yaml: the default
# connection limits), alone, then beside bench/slow_clients.py holding
# HALF_OPEN half-open and SLOW_BODY slow-body connections (each reopened as
# soon as the server closes it). Reports requests/s, p50 and p99 of both,
# their ratios, the open connections the server counted under attack and
# how many stalled connections its timeouts closed. Writes the table to
# bench/out/slow-clients.md.
#
# Usage: bench/slow-clients.sh   (DURATION=10 s per run, ROUNDS=3 interleaved,
#                                 HALF_OPEN=3000, SLOW_BODY=1000)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
HALF_OPEN=${HALF_OPEN:-3000}
SLOW_BODY=${SLOW_BODY:-1000}
PORT=8104
OUT=bench/out
mkdir -p "$OUT"
# Both ends of every connection are on this machine.
ulimit -n "$(ulimit -Hn)"

if ! command -v wrk >/dev/null; then
  echo "installing wrk" >&2
  apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
fi
cargo build --release --locked -q -p modalkit-examples --bin noop

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
RUST_LOG=warn target/release/noop --config config/noop.yaml --host 127.0.0.1 --port "$PORT" & pids+=($!)
for _ in $(seq 1 200); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.05
done

lua=$(mktemp --suffix=.lua)
cat > "$lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"value": 1}'
wrk.headers["Content-Type"] = "application/json"
LUA
to_ms() { # wrk prints 1.23us / 4.56ms / 1.2s
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
# run -> "rps p50_ms p99_ms"
run() {
  local out
  out=$(wrk -t1 -c8 -d"${DURATION}s" --latency -s "$lua" "http://127.0.0.1:$PORT/predict_sync")
  if echo "$out" | grep -q "Non-2xx\|Socket errors"; then echo "errors in a normal client's run:" >&2; echo "$out" >&2; exit 1; fi
  echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}') $(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')") $(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")"
}
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v s="$1" '$1 == s { print $2 }' | head -n 1; }

wrk -t1 -c8 -d2s -s "$lua" "http://127.0.0.1:$PORT/predict_sync" >/dev/null
results=$(mktemp -d)
attack_log=$(mktemp)
open_under_attack=()
for _ in $(seq 1 "$ROUNDS"); do
  run >> "$results/alone"
  python3 bench/slow_clients.py "$PORT" "$HALF_OPEN" "$SLOW_BODY" >>"$attack_log" 2>&1 &
  attacker=$!
  # Let the attacker open its connections before measuring.
  for _ in $(seq 1 100); do
    open=$(metric modalkit_http_connections_open)
    [ "${open%.*}" -ge $((HALF_OPEN + SLOW_BODY)) ] 2>/dev/null && break
    sleep 0.1
  done
  open_under_attack+=("$(metric modalkit_http_connections_open)")
  run >> "$results/attacked"
  kill -TERM "$attacker"; wait "$attacker" || true
done
median() { sort -n "$results/$1" | awk '{ row[NR] = $0 } END { print row[int((NR + 1) / 2)] }'; }
read -r a_rps a_p50 a_p99 < <(median alone)
read -r b_rps b_p50 b_p99 < <(median attacked)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
{
  echo "| normal clients (wrk, c=8, /predict_sync, no-op) | requests/s | p50 ms | p99 ms |"
  echo "|---|---|---|---|"
  echo "| alone | $a_rps | $a_p50 | $a_p99 |"
  echo "| beside $HALF_OPEN half-open + $SLOW_BODY slow-body connections | $b_rps | $b_p50 | $b_p99 |"
  echo "| ratio (attacked / alone) | $(ratio "$b_rps" "$a_rps") | $(ratio "$b_p50" "$a_p50") | $(ratio "$b_p99" "$a_p99") |"
  echo
  echo "open connections under attack (per round): ${open_under_attack[*]}; closed by the timeouts over the run:" \
    "header $(metric 'modalkit_http_connections_timed_out_total{timeout="header"}'), body $(metric 'modalkit_http_connections_timed_out_total{timeout="body"}');" \
    "attacker: $(tr '\n' ';' <"$attack_log")"
  echo "machine: $(bench/machine.sh); ${DURATION}s per run, median of $ROUNDS interleaved rounds, default connection limits"
} | tee "$OUT/slow-clients.md"
rm -r "$results" "$attack_log" "$lua"
