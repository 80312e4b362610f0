#!/usr/bin/env bash
# Tests of the Modal deployment (deploy/): installs the pinned `modal`
# package, PyYAML, pytest and hadolint into .venv-modal, builds the server
# binary, lints the Dockerfiles and runs deploy/tests. No network beyond
# PyPI, no Modal token.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-modal
if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/python" -c "import modal, yaml" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r deploy/requirements-test.txt
fi

"$venv/bin/hadolint" --config .hadolint.yaml deploy/Dockerfile deploy/Dockerfile.cuda
echo "hadolint: deploy/Dockerfile and deploy/Dockerfile.cuda clean"

cargo build --locked -q -p modalkit-examples --bin translate
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
MODALKIT_SERVER_BINARY="$target_dir/debug/translate" "$venv/bin/python" -m pytest -q -p no:cacheprovider deploy/tests
