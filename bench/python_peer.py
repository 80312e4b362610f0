"""The Python peer for bench/embeddings.sh: FastAPI + uvicorn with an asyncio
batcher (max 32 items, 5 ms wait) over sentence-transformers on torch,
serving the same model folder and the same /predict_sync contract. Its
instruction set follows torch's own variables (bench/embeddings.sh caps them
at AVX2 for the peer-avx2 run)."""

import asyncio
import contextlib
import sys

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

MODEL_DIR, PORT = sys.argv[1], int(sys.argv[2])
MAX_BATCH, WAIT_S = 32, 0.005
torch.set_num_threads(2)
model = SentenceTransformer(MODEL_DIR, device="cpu")
queue: asyncio.Queue = asyncio.Queue()


class Message(BaseModel):
    text: str


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
        texts = [text for text, _ in items]
        vectors = await loop.run_in_executor(None, lambda: model.encode(texts, batch_size=MAX_BATCH, normalize_embeddings=True))
        for (_, future), vector in zip(items, vectors):
            future.set_result(vector.tolist())


@contextlib.asynccontextmanager
async def lifespan(_app):
    task = asyncio.create_task(batcher())
    yield
    task.cancel()


app = FastAPI(lifespan=lifespan)


@app.get("/ready")
async def ready():
    # The ISA torch's own kernels dispatch to (AVX512, AVX2, ...), as
    # ATEN_CPU_CAPABILITY may cap it; bench/embeddings.sh checks it.
    return {"status": "ready", "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@app.post("/predict_sync")
async def predict(message: Message):
    future = asyncio.get_running_loop().create_future()
    await queue.put((message.text, future))
    return {"status": "success", "error": None, "meta": {}, "embedding": await future}


uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
