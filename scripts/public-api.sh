#!/usr/bin/env bash
# The facade's public API, checked against modalkit/public-api.txt: every
# item a user of `modalkit-rs` can name (with its signature), listed from
# rustdoc's JSON by scripts/public_api.py. A change to the public surface is
# a decision: CI fails on a difference until the listing is updated with it.
#   scripts/public-api.sh          compare (exit 1 and a diff when they differ)
#   scripts/public-api.sh --bless  write the listing anew
# The crate is documented with the features the workspace unifies (every one
# but `cuda`, as docs.rs builds it), sharing the dependencies' builds with
# `cargo clippy --workspace`.
set -euo pipefail
cd "$(dirname "$0")/.."

snapshot=modalkit/public-api.txt
RUSTDOC="$PWD/scripts/rustdoc-json" \
  RUSTDOCFLAGS="-Z unstable-options --output-format json -D warnings" \
  cargo doc --workspace --no-deps --lib --locked -q
listing=$(mktemp)
trap 'rm -f "$listing"' EXIT
python3 scripts/public_api.py target/doc/modalkit.json > "$listing"
if [ "${1:-}" = "--bless" ]; then
  cp "$listing" "$snapshot"
  echo "wrote $snapshot ($(wc -l < "$snapshot") items)"
elif diff -u "$snapshot" "$listing"; then
  echo "public API: $(wc -l < "$snapshot") items, as in $snapshot"
else
  echo "the public API of modalkit-rs differs from $snapshot (diff above);" >&2
  echo "if the change is meant, run scripts/public-api.sh --bless and commit it" >&2
  exit 1
fi
