#!/usr/bin/env bash
# Packages every publishable crate as the registry would take it, in
# dependency order: `cargo package --workspace` puts the crates it packs in a
# local registry of its own, so each one's manifest resolves its siblings by
# version, as it will once they are published. Checks the manifests
# (versions on every inter-crate dependency, metadata), the file lists
# (nothing outside a crate's folder but its readme) and, unless --no-verify
# is given, that each packed crate builds on its own.
#   scripts/package.sh [--no-verify]
set -euo pipefail
cd "$(dirname "$0")/.."

# The examples and the tests are `publish = false`: the six published crates.
cargo package --workspace --exclude modalkit-examples --exclude modalkit-tests --locked --allow-dirty "$@"
for crate in target/package/*.crate; do
  echo "packaged $(basename "$crate") ($(du -k "$crate" | cut -f1) KiB, $(tar tzf "$crate" | wc -l) files)"
done
