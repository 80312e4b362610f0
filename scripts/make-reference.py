#!/usr/bin/env python3
"""Computes tests/fixtures/bert_family.json: what sentence-transformers (and
transformers, for the classifier) output on the models
scripts/make-models.py assembles, with each model file's sha256, so the
Rust tests compare against the library users compare against, on the very
same bytes.

Needs torch and sentence-transformers (bench/python-peer-requirements.txt):
  python3 -m venv .venv-peer && .venv-peer/bin/pip install -r bench/python-peer-requirements.txt
  scripts/fetch-model.sh && scripts/make-models.py
  .venv-peer/bin/python scripts/make-reference.py
"""

import hashlib
import json
import os
import sys

import sentence_transformers
import torch
import transformers
from sentence_transformers import CrossEncoder, SentenceTransformer

MODELS = sys.argv[1] if len(sys.argv) > 1 else "models"
OUT = "tests/fixtures/bert_family.json"

LONG = " ".join(
    f"Sentence {i} of a long passage about batching, tokens and the attention that ties them together."
    for i in range(60)
)
TEXTS = [
    "A man is eating food.",
    "The new movie is awesome, I loved every minute.",
    "The cat sits outside on the warm stones.",
    "Retrieval pipelines rank passages with a cross-encoder after a fast first stage.",
    "Ünïcödé tëxt, emoji 🚀 and CJK 漢字 mixed in.",
    "",
    "   spaces   around   ",
    LONG,
]
PAIRS = [
    ["How many people live in Berlin?", "Berlin has a population of 3,520,031 registered inhabitants."],
    ["How many people live in Berlin?", "New York City is famous for the Metropolitan Museum of Art."],
    ["what is a cross-encoder", "A cross-encoder reads the query and the passage together and outputs one score."],
    ["what is a cross-encoder", "The weather in Lisbon is mild in winter."],
    ["capital of France", "Paris is the capital and most populous city of France."],
    ["capital of France", ""],
    ["", "An empty query still makes a pair."],
    ["long passage", LONG],
    [LONG, "a long query and a short passage"],
]


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files(folder):
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name == ".complete":
                continue
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = sha256(path)
    return dict(sorted(out.items()))


def rows(tensor):
    return [[round(float(x), 7) for x in row] for row in tensor]


def main():
    torch.manual_seed(0)
    reference = {
        "generated_by": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "texts": TEXTS,
        "pairs": PAIRS,
        "models": {},
    }
    cls_folder = os.path.join(MODELS, "minilm-cls-prompts")
    cls = SentenceTransformer(cls_folder, device="cpu")
    reference["models"]["minilm-cls-prompts"] = {
        "files": files(cls_folder),
        # No prompt_name: the folder's default_prompt_name ("passage").
        "default_prompt": rows(cls.encode(TEXTS, convert_to_tensor=True)),
        "query_prompt": rows(cls.encode(TEXTS, prompt_name="query", convert_to_tensor=True)),
    }
    max_folder = os.path.join(MODELS, "minilm-max")
    pooled_max = SentenceTransformer(max_folder, device="cpu")
    reference["models"]["minilm-max"] = {
        "files": files(max_folder),
        "embeddings": rows(pooled_max.encode(TEXTS, convert_to_tensor=True)),
    }
    rerank_folder = os.path.join(MODELS, "minilm-reranker")
    reranker = CrossEncoder(rerank_folder, device="cpu", max_length=512)
    logits = reranker.predict(PAIRS, activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    reference["models"]["minilm-reranker"] = {
        "files": files(rerank_folder),
        "logits": [round(float(x), 7) for x in logits],
    }
    classifier_folder = os.path.join(MODELS, "minilm-classifier")
    tokenizer = transformers.AutoTokenizer.from_pretrained(classifier_folder)
    classifier = transformers.AutoModelForSequenceClassification.from_pretrained(classifier_folder).eval()
    with torch.no_grad():
        batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=512, return_tensors="pt")
        class_logits = classifier(**batch).logits
    reference["models"]["minilm-classifier"] = {
        "files": files(classifier_folder),
        "logits": rows(class_logits),
        "id2label": classifier.config.id2label,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(reference, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
