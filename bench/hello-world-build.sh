#!/usr/bin/env bash
# The cost of depending on modalkit: writes a new project with `modalkit new`
# (depending on this checkout by path, with this workspace's Cargo.lock) and
# times its first debug build in an empty target folder. Prints wall time
# and CPU time (user + sys of cargo and every rustc it ran).
# Usage: bench/hello-world-build.sh [extra cargo build args, e.g. --features sqs]
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo run -q --locked -p modalkit-rs -- new "$work/hello-model" --modalkit-path "$PWD" >/dev/null
cp Cargo.lock "$work/hello-model/"
cd "$work/hello-model"
cargo fetch -q
TIMEFORMAT='%R %U %S'
{ time cargo build -q --offline --target-dir "$work/target" "$@" 2>&3; } 3>&2 2> "$work/time"
read -r wall user sys < "$work/time"
crates=$(find "$work/target/debug/deps" -name '*.rlib' | wc -l)
python3 - "$wall" "$user" "$sys" "$crates" "$*" <<'PY'
import sys
wall, user, sys_, crates, args = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
print(f"hello-world debug build{(' ' + args) if args else ''}: wall {wall/60:.1f} min, "
      f"CPU {(user + sys_)/60:.1f} min (user {user/60:.1f}, sys {sys_/60:.1f}), {crates} rlibs")
PY
