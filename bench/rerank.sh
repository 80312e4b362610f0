#!/usr/bin/env bash
# The rerank benchmark, in one run on loopback: wrk posts TEI /rerank
# requests (a query of bench/corpus/mixed.jsonl with DOCS of its passages,
# 100-256 tokens each; bench/rerank.lua) at concurrency 1, 8 and 32 to
#   modalkit-rs at fp32 (the best fp32 kernels this CPU has),
#   modalkit-rs at bf16 (AMX, AVX512-BF16 or their rounded values on fp32),
#   the Python peer (bench/python_rerank_peer.py: sentence-transformers'
#   CrossEncoder on torch behind FastAPI and the same batching, each pair
#   one item, max 32, 5 ms),
# all serving the same cross-encoder folder (models/minilm-reranker, from
# scripts/make-models.py). Reports pairs/s (requests/s x DOCS), p50 and
# p99 per request; writes bench/out/rerank.md. A run lasts DURATION at c=1,
# twice that at c=8 and four times at c=32: at c=32, 320 pairs are in
# flight and a request takes seconds, and wrk counts only the requests that
# end inside its run.
#
# Usage: bench/rerank.sh    DURATION (seconds at c=1, default 15), DOCS
# (passages per request, default 10), CONFIG (default config/retrieval.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15}
DOCS=${DOCS:-10}
CONFIG=${CONFIG:-config/retrieval.yaml}
OUT=bench/out
mkdir -p "$OUT"

source bench/lib.sh
ensure_wrk
scripts/fetch-model.sh >/dev/null
python3 scripts/make-models.py >/dev/null
cargo build --release --locked -q -p modalkit-examples --bin embeddings
ensure_peer_venv


names=(); ports=()
for spec in "modalkit-rs-fp32 8311 fp32" "modalkit-rs-bf16 8312 bf16"; do
  read -r name port precision <<<"$spec"
  config=$(mktemp --suffix=.yaml)
  sed "s/^\(\s*\)path: minilm-reranker$/\1path: minilm-reranker\n\1precision: $precision/" "$CONFIG" >"$config"
  RUST_LOG=warn target/release/embeddings --config "$config" --host 127.0.0.1 --port "$port" & pids+=($!)
  names+=("$name"); ports+=("$port")
  wait_ready "http://127.0.0.1:$port/ready"
done
OMP_NUM_THREADS=2 .venv-peer/bin/python bench/python_rerank_peer.py models/minilm-reranker 8310 & pids+=($!)
names+=(python-peer); ports+=(8310)
wait_ready "http://127.0.0.1:8310/ready"

for i in "${!names[@]}"; do
  DOCS=$DOCS wrk -t1 -c8 -d3s -s bench/rerank.lua "http://127.0.0.1:${ports[$i]}" >/dev/null
done
: > "$OUT/rerank.txt"
for spec in "1 1" "8 2" "32 4"; do
  read -r c factor <<<"$spec"
  for i in "${!names[@]}"; do
    out=$(DOCS=$DOCS wrk -t1 -c"$c" -d"$((DURATION * factor))s" --timeout 30s --latency -s bench/rerank.lua "http://127.0.0.1:${ports[$i]}")
    if echo "$out" | grep -q "Non-2xx"; then echo "$out" >&2; echo "non-2xx responses from ${names[$i]}" >&2; exit 1; fi
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    echo "${names[$i]} $c $rps $(awk -v r="$rps" -v d="$DOCS" 'BEGIN {printf "%.1f", r * d}') $(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')") $(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")" | tee -a "$OUT/rerank.txt"
  done
done

{
  echo "## Rerank: $DOCS passages per request (pairs/s = requests/s x $DOCS)"
  echo
  echo "$(bench/machine.sh); runs of ${DURATION}s at c=1, $((DURATION * 2))s at c=8, $((DURATION * 4))s at c=32; models/minilm-reranker (MiniLM-L6 cross-encoder shape)."
  echo
  echo "| server | concurrency | requests/s | pairs/s | p50 ms | p99 ms |"
  echo "|---|---|---|---|---|---|"
  awk '{printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6}' "$OUT/rerank.txt"
} | tee "$OUT/rerank.md"
