"""The Python peer for bench/embeddings.sh: FastAPI + uvicorn with an asyncio
batcher (max 32 items, 5 ms wait) over sentence-transformers on torch,
serving the same model folder and the same /predict_sync contract. Its
instruction set follows torch's own variables (bench/embeddings.sh caps them
at AVX2 for the peer-avx2 run)."""

import asyncio
import sys

import torch
import uvicorn
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

from peer_batcher import batching_app

MODEL_DIR, PORT = sys.argv[1], int(sys.argv[2])
MAX_BATCH, WAIT_S = 32, 0.005
torch.set_num_threads(2)
model = SentenceTransformer(MODEL_DIR, device="cpu")
queue: asyncio.Queue = asyncio.Queue()


class Message(BaseModel):
    text: str


def embed(texts):
    vectors = model.encode(texts, batch_size=MAX_BATCH, normalize_embeddings=True)
    return [vector.tolist() for vector in vectors]


app = batching_app(queue, embed, MAX_BATCH, WAIT_S)


@app.post("/predict_sync")
async def predict(message: Message):
    future = asyncio.get_running_loop().create_future()
    await queue.put((message.text, future))
    return {"status": "success", "error": None, "meta": {}, "embedding": await future}


uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
