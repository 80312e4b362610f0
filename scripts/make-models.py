#!/usr/bin/env python3
"""Assembles the BERT-family test models from all-MiniLM-L6-v2's published
files, since no package registry ships a CLS-pooled embedding model or a
BERT cross-encoder (docs/models.md says which models are published and
which are assembled here).

Standard library only, and deterministic: the same input folder gives the
same bytes, which tests/fixtures/bert_family.json pins by sha256 beside the
sentence-transformers outputs computed on these very files
(scripts/make-reference.py).

  minilm-cls-prompts  MiniLM's transformer, CLS pooling, Normalize, e5-style
                      prompts ("query: ", "passage: "; default "passage")
  minilm-max          MiniLM's transformer, max pooling, no Normalize,
                      max_seq_length 128
  minilm-reranker     BertForSequenceClassification, one label: MiniLM's
                      encoder and pooler, a classifier initialised from a
                      fixed seed (a cross-encoder's shape; its scores are not
                      trained relevance)
  minilm-classifier   the same with three labels (negative/neutral/positive)

Usage: scripts/make-models.py [MODELS_DIR]   (default: models; needs
MODELS_DIR/all-MiniLM-L6-v2 from scripts/fetch-model.sh). Idempotent.
"""

import json
import math
import os
import random
import shutil
import struct
import sys

SOURCE = "all-MiniLM-L6-v2"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]
# Bump when what is built changes, so stale copies are rebuilt.
VERSION = "1"


def read_safetensors(path):
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        tensors[name] = (entry["dtype"], entry["shape"], data[start:end])
    return tensors


def write_safetensors(path, tensors):
    """Tensors in name order, the header padded to 8 bytes (as safetensors writes it)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    encoded = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)


def seeded_f32(seed, count, bound):
    """`count` floats uniform in [-bound, bound) from Python's Mersenne Twister (stable across versions)."""
    generator = random.Random(seed)
    return struct.pack(f"<{count}f", *(generator.uniform(-bound, bound) for _ in range(count)))


def write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")


def link_or_copy(source, dest):
    """The weights are shared, unchanged: a hard link where the file system allows."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def copy_tokenizer(source, dest):
    for name in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(source, name), os.path.join(dest, name))


def sentence_transformer(source, dest, pooling, normalize, max_seq_length, prompts=None, default_prompt=None):
    copy_tokenizer(source, dest)
    shutil.copyfile(os.path.join(source, "config.json"), os.path.join(dest, "config.json"))
    link_or_copy(os.path.join(source, "model.safetensors"), os.path.join(dest, "model.safetensors"))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        os.makedirs(os.path.join(dest, "2_Normalize"), exist_ok=True)
    write_json(os.path.join(dest, "modules.json"), modules)
    write_json(
        os.path.join(dest, "1_Pooling/config.json"),
        {
            "word_embedding_dimension": 384,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    write_json(os.path.join(dest, "sentence_bert_config.json"), {"max_seq_length": max_seq_length, "do_lower_case": False})
    settings = {"prompts": prompts or {}, "default_prompt_name": default_prompt, "similarity_fn_name": "cosine"}
    write_json(os.path.join(dest, "config_sentence_transformers.json"), settings)


def sequence_classifier(source, dest, labels, seed):
    copy_tokenizer(source, dest)
    with open(os.path.join(source, "config.json")) as f:
        config = json.load(f)
    config["architectures"] = ["BertForSequenceClassification"]
    config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    config["label2id"] = {label: i for i, label in enumerate(labels)}
    config.pop("_name_or_path", None)
    write_json(os.path.join(dest, "config.json"), config)
    tensors = {
        f"bert.{name}": tensor
        for name, tensor in read_safetensors(os.path.join(source, "model.safetensors")).items()
        if not name.endswith("position_ids")
    }
    hidden = config["hidden_size"]
    bound = 1.0 / math.sqrt(hidden)
    tensors["classifier.weight"] = ("F32", [len(labels), hidden], seeded_f32(seed, len(labels) * hidden, bound))
    tensors["classifier.bias"] = ("F32", [len(labels)], seeded_f32(seed + 1, len(labels), bound))
    write_safetensors(os.path.join(dest, "model.safetensors"), tensors)


BUILDS = {
    "minilm-cls-prompts": lambda s, d: sentence_transformer(
        s, d, "cls", True, 256, {"query": "query: ", "passage": "passage: "}, "passage"
    ),
    "minilm-max": lambda s, d: sentence_transformer(s, d, "max", False, 128),
    "minilm-reranker": lambda s, d: sequence_classifier(s, d, ["LABEL_0"], seed=20261206),
    "minilm-classifier": lambda s, d: sequence_classifier(s, d, ["negative", "neutral", "positive"], seed=7),
}


def main():
    models = sys.argv[1] if len(sys.argv) > 1 else "models"
    source = os.path.join(models, SOURCE)
    if not os.path.isfile(os.path.join(source, ".complete")):
        sys.exit(f"{source} is missing: run scripts/fetch-model.sh first")
    for name, build in BUILDS.items():
        dest = os.path.join(models, name)
        stamp = os.path.join(dest, ".complete")
        if os.path.isfile(stamp) and open(stamp).read() == VERSION:
            continue
        staging = dest + ".partial"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        build(source, staging)
        with open(os.path.join(staging, ".complete"), "w") as f:
            f.write(VERSION)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staging, dest)
        print(f"assembled {dest}")


if __name__ == "__main__":
    main()
