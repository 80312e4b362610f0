#!/usr/bin/env bash
# The mixed-length embeddings benchmark, in one run on loopback: the corpus
# bench/corpus/mixed.jsonl (200 short queries, 200 passages of 100-256
# tokens, 40 texts past the 256-token limit; CPython docstrings, see
# bench/make_corpus.py), raw in-process (embeddings-bench, batch 1/8/32) and
# served (wrk posting the corpus' texts in turn at concurrency 1/8/32/64, by
# kind: query, passage, and mixed in corpus order), for each server:
#   modalkit-rs at bf16 on the best path this CPU has (amx, or avx512-bf16,
#   or its rounded values on the fp32 kernels), at fp32 on AVX-512, at fp32
#   on AVX2, and with
#   --with-python-peer the Python peer (bench/python_peer.py:
#   sentence-transformers on torch behind FastAPI and a batcher).
# Then short queries beside passages: wrk keeps 32 clients posting passages
# while one client posts queries; its p50/p99 against the same client alone.
# Reports requests/s, p50 and p99, tokens/s raw, and each server's peak
# resident memory; writes bench/out/mixed.md.
#
# Usage: bench/mixed.sh [--with-python-peer]
# DURATION (seconds per wrk run, default 8), RAW_SECONDS (default 4),
# CONFIG (default config/embeddings.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
RAW_SECONDS=${RAW_SECONDS:-4}
CONFIG=${CONFIG:-config/embeddings.yaml}
CORPUS=bench/corpus/mixed.jsonl
OUT=bench/out
mkdir -p "$OUT"
WITH_PEER=0
[ "${1:-}" = "--with-python-peer" ] && WITH_PEER=1

source bench/lib.sh
ensure_wrk
scripts/fetch-model.sh >/dev/null
cargo build --release --locked -q -p modalkit-examples --bin embeddings --bin embeddings-bench


# The servers: name, port, ISA cap, precision.
bf16_path=avx512
grep -qw avx512_bf16 /proc/cpuinfo && bf16_path=avx512-bf16
grep -qw amx_bf16 /proc/cpuinfo && bf16_path=amx
specs=("modalkit-rs-$bf16_path-bf16 8301 $bf16_path bf16" "modalkit-rs-avx512-fp32 8302 avx512 fp32" "modalkit-rs-avx2-fp32 8303 avx2 fp32")
grep -qw avx512f /proc/cpuinfo || specs=("modalkit-rs-avx2-bf16 8301 avx2 bf16" "modalkit-rs-avx2-fp32 8303 avx2 fp32")
names=(); ports=(); server_pids=()
for spec in "${specs[@]}"; do
  read -r name port isa precision <<<"$spec"
  config=$(mktemp --suffix=.yaml)
  sed "s/^\(\s*\)path: all-MiniLM-L6-v2$/\1path: all-MiniLM-L6-v2\n\1precision: $precision/" "$CONFIG" >"$config"
  MODALKIT_CPU_ISA=$isa RUST_LOG=warn target/release/embeddings --config "$config" --host 127.0.0.1 --port "$port" & pids+=($!)
  names+=("$name"); ports+=("$port"); server_pids+=($!)
  wait_ready "http://127.0.0.1:$port/ready"
  curl -s "http://127.0.0.1:$port/ready" | grep -q "($isa, $precision)" \
    || { echo "$name does not run $isa at $precision: $(curl -s "http://127.0.0.1:$port/ready")" >&2; exit 1; }
done
if [ "$WITH_PEER" = 1 ]; then
  ensure_peer_venv
  OMP_NUM_THREADS=2 .venv-peer/bin/python bench/python_peer.py models/all-MiniLM-L6-v2 8300 & pids+=($!)
  names+=(python-peer); ports+=(8300); server_pids+=($!)
  wait_ready "http://127.0.0.1:8300/ready"
fi

# Raw, per path and precision.
: > "$OUT/mixed-raw.txt"
for spec in "${specs[@]}"; do
  read -r name _ isa precision <<<"$spec"
  for kind in query passage; do
    MODALKIT_CPU_ISA=$isa target/release/embeddings-bench models/all-MiniLM-L6-v2 "@$CORPUS:$kind" 1,8,32 "$RAW_SECONDS" "$precision" \
      | sed "s/^raw /$name $kind /" | tee -a "$OUT/mixed-raw.txt"
  done
done

# Served.
measure() { # name port concurrency kind -> "name kind c rps p50 p99"
  local out
  out=$(KIND=$4 CORPUS=$CORPUS wrk -t1 -c"$3" -d"${DURATION}s" --latency -s bench/corpus.lua "http://127.0.0.1:$2")
  if echo "$out" | grep -q "Non-2xx"; then echo "$out" >&2; echo "non-2xx responses from $1" >&2; exit 1; fi
  echo "$1 $4 $3 $(echo "$out" | awk '/Requests\/sec/ {print $2}') $(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')") $(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")"
}
for i in "${!names[@]}"; do
  KIND=mixed CORPUS=$CORPUS wrk -t1 -c8 -d3s -s bench/corpus.lua "http://127.0.0.1:${ports[$i]}" >/dev/null
done
: > "$OUT/mixed-served.txt"
for kind in query passage mixed; do
  for c in 1 8 32 64; do
    for i in "${!names[@]}"; do measure "${names[$i]}" "${ports[$i]}" "$c" "$kind" | tee -a "$OUT/mixed-served.txt"; done
  done
done

# Short queries beside 32 clients posting passages.
: > "$OUT/mixed-beside.txt"
for i in "${!names[@]}"; do
  KIND=passage CORPUS=$CORPUS wrk -t1 -c32 -d"$((DURATION + 2))s" -s bench/corpus.lua "http://127.0.0.1:${ports[$i]}" >/dev/null &
  load=$!
  sleep 1
  measure "${names[$i]}" "${ports[$i]}" 1 query | sed 's/ query 1 / query-beside-passages 1 /' | tee -a "$OUT/mixed-beside.txt"
  wait "$load"
done

: > "$OUT/mixed-memory.txt"
for i in "${!names[@]}"; do
  rss=0
  for pid in ${server_pids[$i]} $(pgrep -P "${server_pids[$i]}" || true); do
    v=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0); rss=$((rss + v))
  done
  echo "${names[$i]} $((rss / 1024))" | tee -a "$OUT/mixed-memory.txt"
done

python3 bench/mixed_report.py "$OUT" "$(bench/machine.sh)" "$DURATION" | tee "$OUT/mixed.md"
