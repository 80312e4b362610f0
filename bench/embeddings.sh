#!/usr/bin/env bash
# Embeddings benchmark, in one run on loopback, for every ISA path of the CPU
# encoder this machine can run (avx512, avx2; forced with MODALKIT_CPU_ISA):
# raw in-process throughput of the pipeline at batch 1/8/32 and the server's
# max_batch_size, then the server (config/embeddings.yaml) under wrk at
# concurrency 1/8/32 posting one ~10-word sentence, its peak resident memory,
# and the served/raw ratio. Writes bench/out/embeddings.md and a PNG chart of
# throughput against concurrency (bench/out/embeddings.png).
#
# The host's speed drifts by more than the ratios the goals compare, so all
# servers run side by side (idle while another is measured) and the run
# goes in ROUNDS rounds: each round measures every raw batch size and every
# server at every concurrency once, and the report takes each figure's
# median round.
#
# Usage: bench/embeddings.sh [--with-python-peer]
#   --with-python-peer  also installs (in .venv-peer) and measures the Python
#                       peer: FastAPI + uvicorn + an asyncio batcher (max 32,
#                       wait 5 ms) over sentence-transformers on torch. On an
#                       AVX-512 CPU a second peer, capped at AVX2 (torch's
#                       MKL_ENABLE_INSTRUCTIONS, ATEN_CPU_CAPABILITY and
#                       ONEDNN_MAX_CPU_ISA), is what the avx2 path is
#                       compared with.
# DURATION (seconds per wrk run, default 15), RAW_SECONDS (default 5),
# ROUNDS (default 3), ISAS (paths to measure, default: every one of avx512
# and avx2 this CPU has).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15}
RAW_SECONDS=${RAW_SECONDS:-5}
ROUNDS=${ROUNDS:-3}
PORT=8201
PEER_PORT=8200
OUT=bench/out
SENTENCE="The quick brown fox jumps over the lazy dog near the river"
WITH_PEER=0
[ "${1:-}" = "--with-python-peer" ] && WITH_PEER=1
mkdir -p "$OUT"

if ! command -v wrk >/dev/null; then
  apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
fi
scripts/fetch-model.sh
cargo build --release --locked -q -p modalkit-examples --bin embeddings --bin embeddings-bench
if [ ! -x .venv-bench/bin/python ] || ! .venv-bench/bin/python -c "import matplotlib" 2>/dev/null; then
  python3 -m venv .venv-bench && .venv-bench/bin/pip install -q --disable-pip-version-check matplotlib==3.10.7
fi

if [ -z "${ISAS:-}" ]; then
  ISAS=""
  grep -qw avx512f /proc/cpuinfo && ISAS="avx512"
  grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo && ISAS="$ISAS avx2"
fi
MAX_BATCH=$(awk '/max_batch_size:/ {print $2; exit}' config/embeddings.yaml)

lua=$(mktemp --suffix=.lua)
cat > "$lua" <<LUA
wrk.method = "POST"
wrk.body = '{"text": "$SENTENCE"}'
wrk.headers["Content-Type"] = "application/json"
LUA

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_ready() { # url
  for _ in $(seq 1 600); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server at $1 never became ready" >&2; exit 1
}
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'; }
measure() { # name port concurrency -> appends "name c rps p50 p99" to $OUT/served.txt
  local out rps p50 p99
  out=$(wrk -t1 -c"$3" -d"${DURATION}s" --latency -s "$lua" "http://127.0.0.1:$2/predict_sync")
  if echo "$out" | grep -q "Non-2xx"; then echo "$out" >&2; echo "non-2xx responses from $1" >&2; exit 1; fi
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')")
  p99=$(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")
  echo "$1 $3 $rps $p50 $p99" | tee -a "$OUT/served.txt"
}

# Every server starts now and stays up (idle while another is measured).
names=(); ports=(); server_pids=()
port=$PORT
for isa in $ISAS; do
  MODALKIT_CPU_ISA=$isa RUST_LOG=warn target/release/embeddings --config config/embeddings.yaml --host 127.0.0.1 --port "$port" & pids+=($!)
  names+=("modalkit-rs-$isa"); ports+=("$port"); server_pids+=($!)
  wait_ready "http://127.0.0.1:$port/ready"
  curl -s "http://127.0.0.1:$port/ready" | grep -q "cpu ($isa, " || { echo "the server does not run the $isa path" >&2; exit 1; }
  port=$((port + 1))
done
if [ "$WITH_PEER" = 1 ]; then
  if [ ! -x .venv-peer/bin/python ] || ! .venv-peer/bin/python -c "import sentence_transformers, fastapi, uvicorn" 2>/dev/null; then
    python3 -m venv .venv-peer
    .venv-peer/bin/pip install -q --disable-pip-version-check -r bench/python-peer-requirements.txt
  fi
  OMP_NUM_THREADS=2 .venv-peer/bin/python bench/python_peer.py models/all-MiniLM-L6-v2 "$PEER_PORT" & pids+=($!)
  names+=(python-peer); ports+=("$PEER_PORT"); server_pids+=($!)
  wait_ready "http://127.0.0.1:$PEER_PORT/ready"
  # On an AVX-512 CPU torch runs AVX-512 kernels (MKL, oneDNN, ATen), so
  # the AVX2 path is also compared with a peer capped at AVX2 by torch's own
  # variables: what the peer would be on an AVX2-only CPU.
  if grep -qw avx512f /proc/cpuinfo && [[ " $ISAS " == *" avx2 "* ]]; then
    peer_avx2_port=$((PEER_PORT - 1))
    MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=2 \
      .venv-peer/bin/python bench/python_peer.py models/all-MiniLM-L6-v2 "$peer_avx2_port" & pids+=($!)
    names+=(python-peer-avx2); ports+=("$peer_avx2_port"); server_pids+=($!)
    wait_ready "http://127.0.0.1:$peer_avx2_port/ready"
    curl -s "http://127.0.0.1:$peer_avx2_port/ready" | grep -q '"AVX2"' || { echo "the capped peer does not run AVX2 kernels" >&2; exit 1; }
  fi
fi
for port in "${ports[@]}"; do
  wrk -t1 -c8 -d3s -s "$lua" "http://127.0.0.1:$port/predict_sync" >/dev/null
done

: > "$OUT/raw.txt"
: > "$OUT/served.txt"
for round in $(seq 1 "$ROUNDS"); do
  for isa in $ISAS; do
    echo "== round $round: raw in-process throughput, $isa (${RAW_SECONDS}s per batch size)"
    MODALKIT_CPU_ISA=$isa target/release/embeddings-bench models/all-MiniLM-L6-v2 "$SENTENCE" \
      "$(printf '%s\n' 1 8 "$MAX_BATCH" 32 | sort -nu | paste -sd,)" "$RAW_SECONDS" \
      | sed "s/^raw /raw isa=$isa /" | tee -a "$OUT/raw.txt"
  done
  echo "== round $round: served (${DURATION}s per server and concurrency)"
  for c in 1 8 32; do
    for i in "${!names[@]}"; do measure "${names[$i]}" "${ports[$i]}" "$c"; done
  done
done

# Peak resident memory over the whole run (the peer: its process and children).
: > "$OUT/memory.txt"
for i in "${!names[@]}"; do
  rss=0
  for pid in ${server_pids[$i]} $(pgrep -P "${server_pids[$i]}" || true); do
    v=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0); rss=$((rss + v))
  done
  echo "${names[$i]} $rss" | tee -a "$OUT/memory.txt"
done

.venv-bench/bin/python bench/report.py "$OUT" "$MAX_BATCH" "$ROUNDS" | tee "$OUT/embeddings.md"
echo "chart: $OUT/embeddings.png"
