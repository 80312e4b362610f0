"""The Python peer for the LLM benchmark: an OpenAI-compatible
`POST /v1/completions` (FastAPI + uvicorn, one process, 2 torch threads) on
transformers, serving SmolLM2-135M-Instruct from the same GGUF the Rust side
serves (scripts/fetch-llm.sh; dequantized to fp32 by transformers, CPU).

Request: {"model", "prompt", "max_tokens" (default 16), "stream": true|false,
"stream_options": {"include_usage": true}?}. Greedy decoding; a request ends at
<|im_end|> (finish_reason "stop") or after max_tokens ("length"). With stream,
the answer is Server-Sent Events, `data: {text_completion chunk}\n\n` once per
generated token (text may be "" while a multi-byte character is incomplete),
a last chunk carrying finish_reason, the usage chunk if asked for, then
`data: [DONE]\n\n`.

Batching, as transformers behind a batcher does it (static batching): requests
that arrive within 5 ms of the first (up to 32) form a batch; the batch is
left-padded, prefilled once, then decoded step by step with the KV cache,
each step pushing its new token to each request's stream; requests arriving
meanwhile wait until the whole batch is done.

  python3 -m venv .venv-llm && .venv-llm/bin/pip install -r bench/python-llm-requirements.txt
  .venv-llm/bin/python bench/python_llm_peer.py MODEL_DIR PORT
"""

import asyncio
import contextlib
import json
import sys
import time
import uuid

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from transformers import AutoModelForCausalLM, AutoTokenizer

MODEL_DIR, PORT = sys.argv[1], int(sys.argv[2])
MAX_BATCH, WAIT_S = 32, 0.005
MODEL_NAME = "SmolLM2-135M-Instruct"
torch.set_num_threads(2)
tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, gguf_file="model.gguf", dtype=torch.float32).eval()
EOS = model.generation_config.eos_token_id
PAD = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else EOS
MAX_POSITIONS = model.config.max_position_embeddings


class Job:
    """One request: its prompt ids, its budget, and the queue its tokens arrive on
    (ints, then None when it is done, or an exception)."""

    def __init__(self, prompt_ids, max_tokens):
        self.prompt_ids = prompt_ids
        self.max_tokens = max_tokens
        self.tokens: asyncio.Queue = asyncio.Queue()


@torch.inference_mode()
def decode_batch(jobs, push):
    """Greedy decode of a whole batch; push(job, token_or_None) from this worker thread."""
    width = max(len(job.prompt_ids) for job in jobs)
    input_ids = torch.tensor([[PAD] * (width - len(job.prompt_ids)) + job.prompt_ids for job in jobs])
    mask = torch.tensor([[0] * (width - len(job.prompt_ids)) + [1] * len(job.prompt_ids) for job in jobs])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    done = [False] * len(jobs)
    produced = [0] * len(jobs)
    cache = None
    steps = max(job.max_tokens for job in jobs)
    for _ in range(steps):
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                    logits_to_keep=1)
        cache = out.cache
        next_ids = out.logits[:, -1, :].argmax(-1)
        for i, job in enumerate(jobs):
            if done[i]:
                continue
            token = int(next_ids[i])
            produced[i] += 1
            push(job, token)
            if token == EOS or produced[i] >= job.max_tokens:
                done[i] = True
                push(job, None)
        if all(done):
            break
        # finished rows keep decoding (static batch); their tokens go nowhere
        input_ids = next_ids.unsqueeze(-1)
        mask = torch.cat([mask, torch.ones(len(jobs), 1, dtype=mask.dtype)], dim=-1)
        positions = positions[:, -1:] + 1


async def run_batches(queue: asyncio.Queue):
    loop = asyncio.get_running_loop()

    def push(job, item):
        loop.call_soon_threadsafe(job.tokens.put_nowait, item)

    while True:
        jobs = [await queue.get()]
        deadline = loop.time() + WAIT_S
        while len(jobs) < MAX_BATCH:
            timeout = deadline - loop.time()
            if timeout <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(queue.get(), timeout))
            except asyncio.TimeoutError:
                break
        try:
            await loop.run_in_executor(None, decode_batch, jobs, push)
        except Exception as error:  # every job of the batch hears of it
            for job in jobs:
                job.tokens.put_nowait(error)


queue: asyncio.Queue = asyncio.Queue()


@contextlib.asynccontextmanager
async def lifespan(_app):
    task = asyncio.create_task(run_batches(queue))
    yield
    task.cancel()


app = FastAPI(lifespan=lifespan)


@app.get("/ready")
async def ready():
    return {"status": "ready", "model": MODEL_NAME, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def error(status, message):
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=status)


async def tokens_of(job):
    """Yields (token_id, text_delta) per generated token; raises what the batch raised."""
    ids, text = [], ""
    while True:
        item = await job.tokens.get()
        if item is None:
            return
        if isinstance(item, Exception):
            raise item
        ids.append(item)
        full = tokenizer.decode(ids, skip_special_tokens=True)
        if full.endswith("\ufffd"):  # a character still incomplete: hold it back
            yield item, ""
            continue
        delta, text = full[len(text):], full
        yield item, delta


@app.post("/v1/completions")
async def completions(body: dict):
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        return error(400, "prompt must be a non-empty string")
    max_tokens = body.get("max_tokens", 16)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        return error(400, "max_tokens must be a positive integer")
    prompt_ids = tokenizer(prompt).input_ids
    if len(prompt_ids) + max_tokens > MAX_POSITIONS:
        return error(400, f"prompt ({len(prompt_ids)} tokens) + max_tokens exceeds {MAX_POSITIONS}")
    job = Job(prompt_ids, max_tokens)
    await queue.put(job)
    completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(text, finish_reason=None):
        return {"id": completion_id, "object": "text_completion", "created": created, "model": MODEL_NAME,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}]}

    def usage(count):
        return {"prompt_tokens": len(prompt_ids), "completion_tokens": count, "total_tokens": len(prompt_ids) + count}

    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():
            count, last = 0, None
            async for token, delta in tokens_of(job):
                count, last = count + 1, token
                yield f"data: {json.dumps(chunk(delta))}\n\n"
            yield f"data: {json.dumps(chunk('', 'stop' if last == EOS else 'length'))}\n\n"
            if include_usage:
                final = {**chunk(""), "choices": [], "usage": usage(count)}
                yield f"data: {json.dumps(final)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    text, count, last = "", 0, None
    async for token, delta in tokens_of(job):
        text, count, last = text + delta, count + 1, token
    body = chunk(text, "stop" if last == EOS else "length")
    body["usage"] = usage(count)
    return body


uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
