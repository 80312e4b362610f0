"""What the Python peers share (bench/python_peer.py,
bench/python_rerank_peer.py): a FastAPI app whose lifespan runs a batcher
over an asyncio queue of (item, future): a batch takes the first item, then
whatever arrives within `wait_s`, up to `max_batch`, and runs `compute`
(items -> one result per item) on the default executor. `GET /ready`
names the ISA torch's kernels dispatch to (AVX512, AVX2, ...), as
ATEN_CPU_CAPABILITY may cap it; bench/embeddings.sh checks it."""

import asyncio
import contextlib

import torch
from fastapi import FastAPI


async def run_batches(queue: asyncio.Queue, compute, max_batch: int, wait_s: float):
    loop = asyncio.get_running_loop()
    while True:
        items = [await queue.get()]
        deadline = loop.time() + wait_s
        while len(items) < max_batch:
            timeout = deadline - loop.time()
            if timeout <= 0:
                break
            try:
                items.append(await asyncio.wait_for(queue.get(), timeout))
            except asyncio.TimeoutError:
                break
        inputs = [item for item, _ in items]
        results = await loop.run_in_executor(None, lambda: compute(inputs))
        for (_, future), result in zip(items, results):
            future.set_result(result)


def batching_app(queue: asyncio.Queue, compute, max_batch: int, wait_s: float) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        task = asyncio.create_task(run_batches(queue, compute, max_batch, wait_s))
        yield
        task.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.get("/ready")
    async def ready():
        return {"status": "ready", "cpu_capability": torch.backends.cpu.get_cpu_capability()}

    return app
