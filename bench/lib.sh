# What the benchmark scripts share; `source bench/lib.sh` from the
# repository root. Servers started in the background go in `pids`, killed
# on exit.

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# wrk from Debian's packages, if missing.
ensure_wrk() {
  command -v wrk >/dev/null && return 0
  apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
}

# The Python peers' venv (.venv-peer: torch, sentence-transformers, FastAPI).
ensure_peer_venv() {
  if [ ! -x .venv-peer/bin/python ] || ! .venv-peer/bin/python -c "import sentence_transformers, fastapi, uvicorn" 2>/dev/null; then
    python3 -m venv .venv-peer
    .venv-peer/bin/pip install -q --disable-pip-version-check -r bench/python-peer-requirements.txt
  fi
}

# Waits (90 s at most) until URL answers 2xx.
wait_ready() {
  for _ in $(seq 1 900); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "server at $1 never became ready" >&2; exit 1
}

# wrk's 1.23us / 4.56ms / 1.2s in milliseconds, 2 decimals.
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.2f", n }'; }
