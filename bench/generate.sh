#!/usr/bin/env bash
# The generation benchmark, in one run on loopback: SmolLM2-135M-Instruct
# (scripts/fetch-llm.sh) served by modalkit-rs's generate example
# (config/generate.yaml: iteration-level batching, up to 32 sequences a
# step) and by the Python peer (bench/python_llm_peer.py: transformers on
# torch behind FastAPI with static batching, the same GGUF dequantized to
# fp32), one server at a time. bench/llm_load.py streams OpenAI completions
# (mixed prompts, greedy, MAX_TOKENS each) at concurrency 1, 8 and 32 for
# DURATION seconds and reports tokens/s, time to first token and
# inter-token latency (p50, p99); each server's peak resident memory is read
# from /proc after its runs. Writes bench/out/generate.md.
#
# Usage: bench/generate.sh
# DURATION (default 20), MAX_TOKENS (default 64), CONCURRENCY (default
# "1 8 32"); LLM_PEER_PYTHON, a Python with the peer's packages (default
# .venv-llm, made from bench/python-llm-requirements.txt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-20}
MAX_TOKENS=${MAX_TOKENS:-64}
CONCURRENCY=${CONCURRENCY:-1 8 32}
OUT=bench/out
mkdir -p "$OUT"
source bench/lib.sh

scripts/fetch-llm.sh >/dev/null
cargo build --release --locked -q -p modalkit-examples --bin generate
PEER_PYTHON=${LLM_PEER_PYTHON:-.venv-llm/bin/python}
if ! "$PEER_PYTHON" -c "import torch, transformers, fastapi, uvicorn, gguf" 2>/dev/null; then
  python3 -m venv .venv-llm
  .venv-llm/bin/pip install -q --disable-pip-version-check -r bench/python-llm-requirements.txt
  PEER_PYTHON=.venv-llm/bin/python
fi

peak_rss_mb() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

# Runs the load at every concurrency against URL; one JSON object per line.
load() {
  for c in $CONCURRENCY; do
    python3 bench/llm_load.py "$1" -c "$c" -d "$DURATION" -n "$MAX_TOKENS" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))'
  done
}

results=$(mktemp)
trap 'rm -f "$results"; cleanup' EXIT

RUST_LOG=warn target/release/generate --config config/generate.yaml --host 127.0.0.1 --port 8401 & pids+=($!)
rust_pid=$!
wait_ready http://127.0.0.1:8401/ready
load http://127.0.0.1:8401 | sed 's/^/modalkit-rs /' >>"$results"
rust_rss=$(peak_rss_mb "$rust_pid")
kill "$rust_pid"

"$PEER_PYTHON" bench/python_llm_peer.py models/SmolLM2-135M-Instruct 8400 2>/dev/null & pids+=($!)
peer_pid=$!
wait_ready http://127.0.0.1:8400/ready
load http://127.0.0.1:8400 | sed 's/^/python-peer /' >>"$results"
peer_rss=$(peak_rss_mb "$peer_pid")
kill "$peer_pid"

python3 - "$results" "$rust_rss" "$peer_rss" "$DURATION" "$MAX_TOKENS" >"$OUT/generate.md" <<'PY'
import json, platform, sys

path, rust_rss, peer_rss, duration, max_tokens = sys.argv[1:6]
rows = {}
for line in open(path):
    server, data = line.split(" ", 1)
    run = json.loads(data)
    rows.setdefault(run["concurrency"], {})[server] = run
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"SmolLM2-135M-Instruct, streamed completions (mixed prompts, greedy, max_tokens {max_tokens}), "
      f"{duration} s per run, on {cpu}.\n")
print("| concurrency | server | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | requests | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for c in sorted(rows):
    for server in ("modalkit-rs", "python-peer"):
        r = rows[c].get(server)
        if r is None:
            continue
        print(f"| {c} | {server} | {r['tokens_per_s']:.1f} | {r['ttft_ms']['p50']:.0f} | {r['ttft_ms']['p99']:.0f} "
              f"| {r['itl_ms']['p50']:.1f} | {r['itl_ms']['p99']:.1f} | {r['requests']} | {r['errors']} |")
    if "modalkit-rs" in rows[c] and "python-peer" in rows[c]:
        ratio = rows[c]["modalkit-rs"]["tokens_per_s"] / max(rows[c]["python-peer"]["tokens_per_s"], 1e-9)
        print(f"| {c} | ratio | {ratio:.2f}x | | | | | | |")
print(f"\nPeak resident memory: modalkit-rs {rust_rss} MB, python-peer {peer_rss} MB.")
PY
cat "$OUT/generate.md"
