"""The Python peer for bench/rerank.sh: sentence-transformers' CrossEncoder
on torch behind FastAPI + uvicorn and the same kind of batcher as ours (each
(query, text) pair one item; max 32 items, 5 ms wait), serving TEI's
/rerank shape (`query`, `texts`, `raw_scores` → `[{index, score}]`, best
first) on the same model folder."""

import asyncio
import contextlib
import sys

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import CrossEncoder

MODEL_DIR, PORT = sys.argv[1], int(sys.argv[2])
MAX_BATCH, WAIT_S = 32, 0.005
torch.set_num_threads(2)
model = CrossEncoder(MODEL_DIR, device="cpu", max_length=512)
queue: asyncio.Queue = asyncio.Queue()


class Rerank(BaseModel):
    query: str
    texts: list[str]
    raw_scores: bool = False


async def batcher():
    loop = asyncio.get_running_loop()
    while True:
        items = [await queue.get()]
        deadline = loop.time() + WAIT_S
        while len(items) < MAX_BATCH:
            timeout = deadline - loop.time()
            if timeout <= 0:
                break
            try:
                items.append(await asyncio.wait_for(queue.get(), timeout))
            except asyncio.TimeoutError:
                break
        pairs = [pair for pair, _ in items]
        logits = await loop.run_in_executor(
            None, lambda: model.predict(pairs, batch_size=MAX_BATCH, activation_fn=torch.nn.Identity())
        )
        for (_, future), logit in zip(items, logits):
            future.set_result(float(logit))


@contextlib.asynccontextmanager
async def lifespan(_app):
    task = asyncio.create_task(batcher())
    yield
    task.cancel()


app = FastAPI(lifespan=lifespan)


@app.get("/ready")
async def ready():
    return {"status": "ready", "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@app.post("/rerank")
async def rerank(request: Rerank):
    loop = asyncio.get_running_loop()
    futures = []
    for text in request.texts:
        future = loop.create_future()
        await queue.put(((request.query, text), future))
        futures.append(future)
    logits = await asyncio.gather(*futures)
    scores = logits if request.raw_scores else [1 / (1 + pow(2.718281828459045, -x)) for x in logits]
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    return [{"index": i, "score": scores[i]} for i in ranked]


uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
