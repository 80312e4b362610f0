#!/usr/bin/env bash
# An SQS- and SSM-compatible server for the tests: moto's server from PyPI,
# installed into .venv-moto and run on 127.0.0.1.
#   scripts/moto.sh install          install (idempotent)
#   scripts/moto.sh start PORT       start in the background; pid in .moto.pid
#   scripts/moto.sh stop             stop the one started by `start`
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-moto
MOTO_VERSION=5.2.1

case "${1:-}" in
  install)
    if ! "$venv/bin/python" -c "import moto, flask" 2>/dev/null; then
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
    fi
    ;;
  start)
    port=${2:?usage: scripts/moto.sh start PORT}
    "$0" install
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" > .moto.log 2>&1 &
    echo $! > .moto.pid
    for _ in $(seq 1 200); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then exit 0; fi
      sleep 0.05
    done
    echo "moto did not start; log:" >&2; cat .moto.log >&2; exit 1
    ;;
  stop)
    if [ -f .moto.pid ]; then
      kill "$(cat .moto.pid)" 2>/dev/null || true
      rm -f .moto.pid
    fi
    ;;
  *)
    echo "usage: scripts/moto.sh install | start PORT | stop" >&2; exit 2 ;;
esac
