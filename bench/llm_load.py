#!/usr/bin/env python3
"""Load generator for an OpenAI-compatible streaming `POST /v1/completions`
(the Rust server or bench/python_llm_peer.py). Standard library only (asyncio,
plain HTTP/1.1 over one new connection per request), so any python3 runs it.

C workers each send one request at a time, back to back, until S seconds have
passed; requests in flight then are let finish and counted. Prompts come in
turn from PROMPTS below (mixed lengths, fixed order, shared across workers), so
a run is the same for every server. Each request asks for `max_tokens` N with
stream: true, temperature 0 (greedy, as the peer decodes) and
stream_options.include_usage.

  python3 bench/llm_load.py http://127.0.0.1:8080 --concurrency 8 --duration 10 --max-tokens 64

Prints one JSON object:
  requests, errors (non-200, broken stream, no [DONE]), first_error,
  tokens: completion tokens, from the usage chunk when the server sends one,
          else one per chunk carrying a choice before the finishing chunk,
  tokens_per_s: tokens / wall time from the first request to the last answer,
  ttft_ms p50/p99: request sent -> first token chunk,
  itl_ms p50/p99: gaps between consecutive token chunks of one request, all pooled.
"""

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

PROMPTS = [
    "Hello",
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time,",
    "Write a short poem about the sea.",
    "The three laws of thermodynamics are",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "In 1969, the first humans",
    "import numpy as np\n\ndef softmax(x):\n",
    "Q: What is the boiling point of water at sea level?\nA:",
    "The quick brown fox",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Explain what a hash map is, in two sentences.<|im_end|>\n<|im_start|>assistant\n",
    "Dear customer, thank you for your order. Unfortunately,",
    "A list of the planets of the solar system, from the sun outwards: Mercury,",
    "SELECT name, email FROM users WHERE",
    "The recipe calls for two cups of flour, one egg, a pinch of salt and",
    "Photosynthesis is the process by which plants convert light energy into chemical energy. "
    "It takes place mainly in the leaves, inside the chloroplasts, and it needs water, carbon "
    "dioxide and sunlight. The products of photosynthesis are",
    "Translate to French: I would like a cup of coffee, please.\nFrench:",
    "fn main() {\n    let numbers = vec![1, 2, 3];\n",
    "The history of the Roman Empire spans more than a thousand years. It began when Augustus "
    "became the first emperor in 27 BC, and in the West it ended in 476 AD, when the last emperor "
    "was deposed. In the East, the empire lived on as the Byzantine Empire until 1453. Historians "
    "usually explain the fall of the Western empire by",
]


def percentile(values, fraction):
    """Nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return round(ordered[rank - 1], 3)


async def read_chunked(reader):
    """The body of a chunked response, chunk by chunk."""
    while True:
        size_line = await reader.readline()
        if not size_line:
            raise ConnectionError("connection closed inside a chunked body")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readline()
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


async def read_plain(reader, length):
    if length is None:
        while data := await reader.read(65536):
            yield data
    else:
        yield await reader.readexactly(length)


async def one_request(url, body, stats):
    """Sends one streaming completion; records its timings in stats."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    path = (parts.path.rstrip("/") or "") + "/v1/completions"
    payload = json.dumps(body).encode()
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        status_line = await reader.readline()
        status = int(status_line.split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body_parts = read_chunked(reader)
        else:
            length = headers.get("content-length")
            body_parts = read_plain(reader, int(length) if length else None)
        if status != 200:
            text = b"".join([part async for part in body_parts]).decode(errors="replace")
            raise RuntimeError(f"HTTP {status}: {text[:200]}")

        buffer, chunk_times, usage_tokens, done = b"", [], None, False
        async for part in body_parts:
            now = time.perf_counter()
            buffer += part
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        continue
                    message = json.loads(data)
                    if message.get("usage"):
                        usage_tokens = message["usage"].get("completion_tokens")
                    for choice in message.get("choices") or []:
                        if choice.get("finish_reason") is None or choice.get("text"):
                            chunk_times.append(now)
        if not done:
            raise RuntimeError("stream ended without [DONE]")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    stats["requests"] += 1
    stats["tokens"] += usage_tokens if usage_tokens is not None else len(chunk_times)
    if chunk_times:
        stats["ttft"].append((chunk_times[0] - started) * 1000)
        stats["itl"].extend((b - a) * 1000 for a, b in zip(chunk_times, chunk_times[1:]))


async def run(args):
    stats = {"requests": 0, "tokens": 0, "errors": 0, "first_error": None, "ttft": [], "itl": []}
    counter = iter(range(1 << 62))
    start = time.perf_counter()
    deadline = start + args.duration

    async def worker():
        while time.perf_counter() < deadline:
            prompt = PROMPTS[next(counter) % len(PROMPTS)]
            body = {"model": args.model, "prompt": prompt, "max_tokens": args.max_tokens, "stream": True,
                    "temperature": 0, "stream_options": {"include_usage": True}}
            try:
                await asyncio.wait_for(one_request(args.url, body, stats), args.timeout)
            except Exception as error:  # counted, and the worker goes on
                stats["errors"] += 1
                stats["first_error"] = stats["first_error"] or f"{type(error).__name__}: {error}"
                await asyncio.sleep(0.05)

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - start
    return {
        "url": args.url,
        "concurrency": args.concurrency,
        "duration_s": round(elapsed, 3),
        "max_tokens": args.max_tokens,
        "requests": stats["requests"],
        "errors": stats["errors"],
        "first_error": stats["first_error"],
        "tokens": stats["tokens"],
        "tokens_per_s": round(stats["tokens"] / elapsed, 2),
        "requests_per_s": round(stats["requests"] / elapsed, 3),
        "ttft_ms": {"p50": percentile(stats["ttft"], 0.5), "p99": percentile(stats["ttft"], 0.99)},
        "itl_ms": {"p50": percentile(stats["itl"], 0.5), "p99": percentile(stats["itl"], 0.99)},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="base URL, e.g. http://127.0.0.1:8080 (/v1/completions is appended)")
    parser.add_argument("--concurrency", "-c", type=int, default=1)
    parser.add_argument("--duration", "-d", type=float, default=10.0, help="seconds to keep starting requests")
    parser.add_argument("--max-tokens", "-n", type=int, default=64)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one request may take")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=1))


if __name__ == "__main__":
    main()
