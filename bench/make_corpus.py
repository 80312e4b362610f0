"""Writes bench/corpus/mixed.jsonl: the mixed-length corpus of the embeddings
benchmark and of the precision tests' retrieval check. Real English text
from the docstrings of CPython's standard library (of the interpreter that
runs this script; the file in the repo came from CPython 3.11.7), cut by word
count into three kinds:

- query: a docstring's first sentence of 4 to 15 words (about 5-20 tokens);
- passage: a docstring paragraph run of 75 to 190 words (about 100-256 tokens);
- long: 260 words or more (past the model's 256-token limit: truncated).

Deterministic for a given interpreter: modules and names in sorted order,
then every k-th item kept. One JSON object per line: {"kind", "text"}.

    python3 bench/make_corpus.py > bench/corpus/mixed.jsonl
"""

import importlib
import inspect
import json
import re
import sys
import warnings

MODULES = sorted(
    name
    for name in sys.stdlib_module_names
    if not name.startswith("_") and name not in {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"}
)
WANT = {"query": 200, "passage": 200, "long": 40}


def docstrings():
    seen = set()
    for module_name in MODULES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module = importlib.import_module(module_name)
            except Exception:
                continue
        objects = [module] + [getattr(module, n, None) for n in sorted(dir(module)) if not n.startswith("_")]
        for obj in objects:
            doc = inspect.getdoc(obj) if obj is not None else None
            if not doc or doc in seen:
                continue
            seen.add(doc)
            yield doc


def clean(text):
    return re.sub(r"\s+", " ", text).strip()


def main():
    found = {kind: [] for kind in WANT}
    for doc in docstrings():
        first = clean(re.split(r"(?<=[.!?])\s", doc.strip(), maxsplit=1)[0])
        if 4 <= len(first.split()) <= 15 and first[0].isupper():
            found["query"].append(first)
        words = clean(doc).split()
        if 75 <= len(words) <= 190:
            found["passage"].append(" ".join(words))
        elif len(words) >= 260:
            found["long"].append(" ".join(words[:600]))
    for kind, want in WANT.items():
        items = found[kind]
        step = max(1, len(items) // want)
        for text in items[::step][:want]:
            print(json.dumps({"kind": kind, "text": text}, ensure_ascii=False))


main()
