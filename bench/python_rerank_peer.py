"""The Python peer for bench/rerank.sh: sentence-transformers' CrossEncoder
on torch behind FastAPI + uvicorn and the same kind of batcher as ours (each
(query, text) pair one item; max 32 items, 5 ms wait), serving TEI's
/rerank shape (`query`, `texts`, `raw_scores` → `[{index, score}]`, best
first) on the same model folder."""

import asyncio
import math
import sys

import torch
import uvicorn
from pydantic import BaseModel
from sentence_transformers import CrossEncoder

from peer_batcher import batching_app

MODEL_DIR, PORT = sys.argv[1], int(sys.argv[2])
MAX_BATCH, WAIT_S = 32, 0.005
torch.set_num_threads(2)
model = CrossEncoder(MODEL_DIR, device="cpu", max_length=512)
queue: asyncio.Queue = asyncio.Queue()


class Rerank(BaseModel):
    query: str
    texts: list[str]
    raw_scores: bool = False


def score(pairs):
    logits = model.predict(pairs, batch_size=MAX_BATCH, activation_fn=torch.nn.Identity())
    return [float(logit) for logit in logits]


app = batching_app(queue, score, MAX_BATCH, WAIT_S)


@app.post("/rerank")
async def rerank(request: Rerank):
    loop = asyncio.get_running_loop()
    futures = []
    for text in request.texts:
        future = loop.create_future()
        await queue.put(((request.query, text), future))
        futures.append(future)
    logits = await asyncio.gather(*futures)
    scores = logits if request.raw_scores else [1 / (1 + math.exp(-x)) for x in logits]
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    return [{"index": i, "score": scores[i]} for i in ranked]


uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
