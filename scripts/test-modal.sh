#!/usr/bin/env bash
# Tests of the Modal deployment (deploy/): installs the pinned `modal`
# package, PyYAML, pytest and hadolint into .venv-modal, lints the
# Dockerfiles and runs deploy/tests against the translate binary that
# `cargo test --workspace` built (built here only if missing). No network
# beyond PyPI, no Modal token.
# Usage: scripts/test-modal.sh [install]   (install: the venv only)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-modal
if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/python" -c "import modal, yaml" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r deploy/requirements-test.txt
fi
[ "${1:-}" = install ] && exit 0

"$venv/bin/hadolint" --config .hadolint.yaml deploy/Dockerfile deploy/Dockerfile.cuda
echo "hadolint: deploy/Dockerfile and deploy/Dockerfile.cuda clean"

target_dir=${CARGO_TARGET_DIR:-$PWD/target}
binary="$target_dir/debug/translate"
[ -x "$binary" ] || cargo build --locked -q -p modalkit-examples --bin translate
MODALKIT_SERVER_BINARY="$binary" "$venv/bin/python" -m pytest -q -p no:cacheprovider deploy/tests
