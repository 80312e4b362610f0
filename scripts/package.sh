#!/usr/bin/env bash
# Packages every publishable crate as the registry would take it, in
# dependency order: `cargo package --workspace` puts the crates it packs in a
# local registry of its own, so each one's manifest resolves its siblings by
# version, as it will once they are published. Checks the manifests
# (versions on every inter-crate dependency, metadata), the file lists
# (every file a crate's code includes with include_str!/include_bytes! is
# in its package) and, unless --no-verify is given, that each packed crate
# builds on its own (about 8 minutes on 2 cores: CI passes --no-verify, a
# release runs it whole).
#   scripts/package.sh [--no-verify]
set -euo pipefail
cd "$(dirname "$0")/.."

# The examples and the tests are `publish = false`: the six published crates.
rm -f target/package/*.crate
cargo package --workspace --exclude modalkit-examples --exclude modalkit-tests --locked --allow-dirty "$@"
python3 - <<'PY'
import glob, os, re, sys, tarfile
missing = []
for crate in sorted(glob.glob("target/package/*.crate")):
    with tarfile.open(crate) as tar:
        names = tar.getnames()
    root = names[0].split("/")[0]
    packed = {name[len(root) + 1:] for name in names}
    source_dirs = {os.path.dirname(name) for name in packed if name.endswith(".rs")}
    for source in (name for name in packed if name.endswith(".rs")):
        folder = os.path.dirname(source)
        with tarfile.open(crate) as tar:
            text = tar.extractfile(f"{root}/{source}").read().decode()
        for included in re.findall(r'include_(?:str|bytes)!\("([^"]+)"\)', text):
            path = os.path.normpath(os.path.join(folder, included))
            if path not in packed:
                missing.append(f"{os.path.basename(crate)}: {source} includes {included}, which is not packaged")
    print(f"packaged {os.path.basename(crate)} ({os.path.getsize(crate) // 1024} KiB, {len(packed)} files)")
if missing:
    print("\n".join(missing), file=sys.stderr)
    sys.exit(1)
PY
